"""The input pipeline: the only package of bt_jax that imports TensorFlow, and only where it
is needed (host augmentation, TFDS sources, image folders).

In-memory sources (digits, Fashion-MNIST's IDX files, CIFAR's python archives) augmented on
the device (data.augment_on="device") never import it: training, evaluation and every
artifact work on a machine with JAX alone. `pip install 'bt_jax[data]'` brings TensorFlow
and TFDS where they are wanted.
"""
import contextlib
import os
import sys
import tempfile

from bt_jax.errors import ConfigError

_CONFIGURED = False
# What TensorFlow's native libraries print to stderr while they load, whatever
# TF_CPP_MIN_LOG_LEVEL says (TF 2.21 logs through absl before absl's logging is set up):
# notices, not problems, and every CLI error would otherwise be three lines instead of one.
TF_STARTUP_NOTICES = ("All log messages before absl::InitializeLog() is called",
                      "oneDNN custom operations are on")
DATA_EXTRA = "pip install 'bt_jax[data]'  (or: pip install tensorflow-cpu tensorflow-datasets)"


def missing_package_error(package: str, needed_for: str) -> ConfigError:
    """The one-line error for an optional package that `needed_for` cannot do without."""
    return ConfigError(f"{needed_for} needs {package}, which is not installed: {DATA_EXTRA}. "
                       "Without it, use an in-memory source (digits, fashion_mnist from IDX "
                       "files, cifar10 / cifar100 from their python archives) with "
                       "data.augment_on=device.")


def without_startup_notices(text: str) -> str:
    """`text` (captured stderr) without the lines of TF_STARTUP_NOTICES; the rest unchanged."""
    return "".join(line for line in text.splitlines(keepends=True)
                   if not any(notice in line for notice in TF_STARTUP_NOTICES))


@contextlib.contextmanager
def quiet_tensorflow_start():
    """Runs the body, which may load TensorFlow, quietly: TF_CPP_MIN_LOG_LEVEL defaults to 3
    (TF's own logs), and the process's stderr (file descriptor 2, where native code writes)
    is captured and afterwards written back less TF_STARTUP_NOTICES, which ignore that
    variable. Python warnings and native errors raised meanwhile still reach stderr, later."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:      # no stderr to capture
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = without_startup_notices(capture.read().decode(errors="replace"))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def import_tensorflow(needed_for: str = "This input pipeline"):
    """TensorFlow, configured once for input pipelines, and returned.

    - No GPUs: the accelerator's memory belongs to JAX.
    - Quiet: TF_CPP_MIN_LOG_LEVEL defaults to 3, and the native libraries' start-up
      notices (TF_STARTUP_NOTICES), which ignore it, are dropped from stderr; everything
      else they print is kept.
    - One thread per op: tf.data's parallel map runs examples on all cores; op-level
      threads on top of it contend for the same cores (measured: 2 cores gave 1.0x one
      core's views/s with TF's default intra-op pool, 1.5x with one thread per op).
    Where TensorFlow was already initialised by other code these settings cannot change
    and TF's are kept.

    Raises:
      ConfigError naming the package and the pip extra, where TensorFlow is not installed.
    """
    global _CONFIGURED
    try:
        if "tensorflow" in sys.modules:
            import tensorflow as tf  # pylint: disable=import-outside-toplevel
        else:
            with quiet_tensorflow_start():
                import tensorflow as tf  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise missing_package_error("TensorFlow", needed_for) from None
    if not _CONFIGURED:
        _CONFIGURED = True
        try:
            tf.config.set_visible_devices([], "GPU")
            tf.config.threading.set_intra_op_parallelism_threads(1)
        except RuntimeError:
            pass
    return tf


def import_tfds(needed_for: str):
    """tensorflow_datasets, after `import_tensorflow` (so TF never sees the GPUs).

    Raises:
      ConfigError naming the package and the pip extra, where it is not installed.
    """
    import_tensorflow(needed_for)
    try:
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise missing_package_error("tensorflow-datasets", needed_for) from None
    return tfds
