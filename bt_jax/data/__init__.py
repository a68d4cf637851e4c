"""The input pipeline: the only package of bt_jax that imports TensorFlow.

`bt_jax.data.device_augment` and `bt_jax.data.views` do not import TensorFlow, so they work
on a machine without it.
"""

_CONFIGURED = False


def import_tensorflow():
    """TensorFlow, configured once for input pipelines, and returned.

    - No GPUs: the accelerator's memory belongs to JAX.
    - One thread per op: tf.data's parallel map runs examples on all cores; op-level
      threads on top of it contend for the same cores (measured: 2 cores gave 1.0x one
      core's views/s with TF's default intra-op pool, 1.5x with one thread per op).
    Where TensorFlow was already initialised by other code these settings cannot change
    and TF's are kept.
    """
    global _CONFIGURED
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    if not _CONFIGURED:
        _CONFIGURED = True
        try:
            tf.config.set_visible_devices([], "GPU")
            tf.config.threading.set_intra_op_parallelism_threads(1)
        except RuntimeError:
            pass
    return tf


def keep_tensorflow_off_accelerators() -> None:
    """Hides GPUs from TensorFlow so that the accelerator's memory belongs to JAX."""
    import_tensorflow()
