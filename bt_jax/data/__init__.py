"""The input pipeline: the only package of bt_jax that imports TensorFlow."""


def keep_tensorflow_off_accelerators() -> None:
    """Hides GPUs from TensorFlow so that the accelerator's memory belongs to JAX."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tf.config.set_visible_devices([], "GPU")
