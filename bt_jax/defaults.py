"""Moved: the default config and its validation are `bt_jax.config`'s. A recipe that
still imports this module gets one line naming the new import."""
raise ImportError("bt_jax.defaults is now bt_jax.config: write `from bt_jax.config import "
                  "base_config` (and bt_jax.config.validate).")
