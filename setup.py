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
TEST = ["pytest>=7.4", "hypothesis>=6.90", "pytest-xdist>=3.5"]
# experiments/torch_reference.py only; a CPU build is enough (`pip install torch==2.13.0`
# on this project's machine). Not installed by `make`.
BENCH = ["torch>=2.3"]

setup(
    name="bt_jax",
    version="0.1.0",
    description="Barlow Twins self-supervised pretraining in JAX/Flax",
    packages=find_packages(include=["bt_jax", "bt_jax.*"]),
    python_requires=">=3.10",
    install_requires=CORE,
    extras_require={"data": DATA, "train": DATA, "test": DATA + TEST, "bench": BENCH},
)
