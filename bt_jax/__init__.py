"""bt_jax: Barlow Twins (Zbontar et al., ICML 2021) in JAX and Flax."""
__version__ = "0.1.0"
