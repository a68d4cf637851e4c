"""Orbax checkpoints of the TrainState: periodic saves, keep-last-k, resume.

Orbax writes each step into a temporary directory and renames it when complete, so an
interrupted save never corrupts an earlier checkpoint.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from bt_jax.config import ConfigError


class CheckpointManager:
    """Saves a pytree every `every_steps` steps into `directory`, keeping the last `keep`."""

    def __init__(self, directory: str, *, every_steps: int, keep: int = 3):
        if every_steps <= 0:
            raise ConfigError(f"checkpoint.every_steps must be positive; got {every_steps}.")
        self.every_steps = every_steps
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

    def latest_step(self):
        """The newest saved step, or None."""
        return self._manager.latest_step()

    def restore_or(self, state: Any) -> Any:
        """The newest checkpoint restored into `state`'s structure, or `state` if none."""
        step = self._manager.latest_step()
        if step is None:
            return state
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        try:
            return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(
                f"The checkpoint at step {step} in {self.directory!r} does not fit this "
                f"config's model or optimiser ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:200]}). Resume with the config that wrote it "
                "(config.json beside it), or start in a new --workdir.") from None

    def maybe_save(self, step: int, state: Any, *, force: bool = False) -> bool:
        """Saves at multiples of every_steps (or when forced); True if it saved."""
        if not force and step % self.every_steps:
            return False
        if self._manager.latest_step() == step:
            return False
        return self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

    def wait(self):
        """Blocks until asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self):
        """Waits for pending saves, then releases Orbax's threads."""
        self._manager.close()
