"""bt_jax: Barlow Twins (Zbontar et al., ICML 2021) in JAX and Flax."""
__version__ = "0.1.0"

from bt_jax.io import storage as _storage

_storage.use_emulators()   # STORAGE_EMULATOR_HOST, where set, reaches every client
