"""Test setup: 8 virtual CPU devices, set before JAX starts."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402  (after the flag on purpose)

assert jax.device_count() == 8, (
    "tests expect 8 CPU devices: JAX was imported before tests/conftest.py set XLA_FLAGS")
