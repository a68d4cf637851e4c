"""bt_jax: Barlow Twins (Zbontar et al., ICML 2021) in JAX and Flax."""
from setuptools import find_packages, setup

# Training, evaluation, checkpoints, TensorBoard events and plots with in-memory sources
# and on-device augmentation need only these: no TensorFlow.
CORE = [
    "jax>=0.6",
    "flax>=0.10",
    "optax>=0.2.4",
    "chex>=0.1.88",
    "ml-collections>=0.1.1",
    "numpy>=1.26",
    "orbax-checkpoint>=0.6",
    "absl-py>=1.4",
    "scikit-learn>=1.3",
    "matplotlib>=3.7",
    "tensorboard>=2.16",
]
# The tf.data / TFDS input pipeline: host augmentation, TFDS sources, image folders.
DATA = [
    "tensorflow-cpu>=2.16",
    "tensorflow-datasets>=4.9.4",
]
# gs:// and s3:// workdirs (bt_jax.io.storage through etils.epath and fsspec).
GS = ["gcsfs>=2026.10"]
S3 = ["s3fs>=2026.1"]
# The tests also run a GCS emulator on 127.0.0.1 (tests/gcs_emulator.py).
TEST = ["pytest>=7.4", "hypothesis>=6.90", "pytest-xdist>=3.5",
        "gcp-storage-emulator>=2026.7"] + GS
# experiments/torch_reference.py only; a CPU build is enough (`pip install torch==2.13.0`
# on this project's machine). Not installed by `make`.
BENCH = ["torch>=2.3"]



def _installed_version(name: str, default: str) -> str:
    """The version of an installed distribution, else default (a fresh build environment)."""
    try:
        from importlib.metadata import version  # pylint: disable=import-outside-toplevel
        return version(name)
    except Exception:  # pylint: disable=broad-except  # PackageNotFoundError
        return default


# `python -m bt_jax.plan` for TPU slices: libtpu, XLA's TPU compiler, which compiles for
# compile-only devices on any machine. jax[tpu] must match the jax it runs under: pinned to
# the installed one (0.10.2 where none is installed yet; CI pins it after `make install`).
TPU = [f"jax[tpu]=={_installed_version('jax', '0.10.2')}"]
# `python -m bt_jax.plan` for NVIDIA GPU nodes: XLA:GPU, JAX's CUDA plugin, which compiles
# for compile-only devices with no GPU and no driver. The plugin alone (about 480 MB):
# jax[cuda12]'s NVIDIA libraries (cuDNN, cuBLAS, NCCL, ptxas, ...; about 4 GB more) are
# only needed to run on a GPU, and change no plan (docs/scaling.md). Pinned as TPU.
GPU_PLAN = [f"jax-cuda12-plugin=={_installed_version('jax', '0.10.2')}",
            f"jax-cuda12-pjrt=={_installed_version('jax', '0.10.2')}"]

setup(
    name="bt_jax",
    version="0.1.0",
    description="Barlow Twins self-supervised pretraining in JAX/Flax",
    packages=find_packages(include=["bt_jax", "bt_jax.*"]),
    python_requires=">=3.10",
    install_requires=CORE,
    extras_require={"data": DATA, "train": DATA, "test": DATA + TEST, "bench": BENCH,
                    "tpu": TPU, "gpu-plan": GPU_PLAN, "gs": GS, "s3": S3},
    package_data={"bt_jax.plan": ["gpus/*.json"]},
)
