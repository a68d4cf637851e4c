"""Orbax checkpoints of the TrainState: periodic saves, keep-last-k, resume.

Orbax writes each step into a temporary directory and renames it when complete, so an
interrupted save (a kill, a full disk) never corrupts an earlier checkpoint; a failed
asynchronous save is reported as one SaveError naming the step that is still intact.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import sys
import traceback
import warnings
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from bt_jax.io import run_dir
from bt_jax.io import storage
from bt_jax.errors import ConfigError


class SaveError(Exception):
    """A checkpoint could not be written (full disk, file-size limit, lost permissions)."""


def _first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an error's message, for one-line reports. Where the message is an
    object's repr (some of TensorStore's bound errors carry "<bound method ...>"), or empty,
    the error's cause is used, else its type."""
    for err in (e, e.__cause__, e.__context__):
        if err is None:
            continue
        lines = str(err).strip().splitlines()
        if lines and not re.match(r"<(bound method|built-in|function|[\w.]+ object) ", lines[0]):
            return lines[0][:limit]
    return type(e).__name__


def _reason(e: BaseException, limit: int = 200) -> str:
    """The cause of a failed save in a few words: the operating system's message where
    the error carries one (TensorStore's "[os_error_code='28']": "No space left on
    device"), else the error's first line."""
    code = _errno_of(e)
    if code is not None:
        return f"{os.strerror(code)} (errno {code})"
    return f"{type(e).__name__}: {_first_line(e, limit)}"


def _errno_of(e: BaseException) -> Optional[int]:
    """The operating system's error number behind a failed save, where it carries one."""
    code = re.search(r"os_error_code='?(\d+)", str(e))
    if code:
        return int(code.group(1))
    if isinstance(e, OSError) and e.errno:
        return e.errno
    return None


_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# Two writers of one step: the second rename of a finished step's folder finds it there.
_ANOTHER_WRITER = {errno.ENOTEMPTY, errno.EEXIST}


def _remedy(e: BaseException) -> str:
    """What to do about a failed save, from its cause."""
    code = _errno_of(e)
    if code in _NO_SPACE:
        return "Free disk space (or raise the quota / file-size limit)"
    if code in _ANOTHER_WRITER or "already exists" in str(e):
        return ("Another process saved the same step at the same time. "
                + _ANOTHER_WRITER_FIX)
    return "Fix the cause"


_ANOTHER_WRITER_FIX = ("Two runs are writing into this workdir: stop the other writer "
                       "(bt_jax.main refuses a second run while the first holds run.lock), "
                       "or give each run its own --workdir")


def _steps_phrase(steps: list[int], verb: tuple[str, str] = ("", "")) -> str:
    """'the checkpoint of step 40' / 'the checkpoints of steps 20, 30 and 40', followed by
    verb[0] for one step, verb[1] for several (e.g. (" is", " are"))."""
    if len(steps) == 1:
        return f"the checkpoint of step {steps[0]}{verb[0]}"
    names = [str(s) for s in steps]
    return f"the checkpoints of steps {', '.join(names[:-1])} and {names[-1]}{verb[1]}"


class _QuietFailedSaves(logging.Filter):
    """Drops the tracebacks Orbax logs from its background threads when an asynchronous
    save fails: CheckpointManager reports that failure itself, as one SaveError."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        message = record.getMessage()
        if "orbax" in record.pathname:   # absl: the failed thread and its save
            return not ("save" in message.lower() or "raised an exception" in message)
        # asyncio, at exit: the failed write's futures that Orbax never awaited
        return not ("exception was never retrieved" in message
                    and ("orbax" in message or "OCDBT" in message))


_QUIET = _QuietFailedSaves()


def _is_closed_loop_noise(unraisable) -> bool:
    """Whether an unraisable exception is TensorStore's "Event loop is closed": once a save
    fails, Orbax closes that save's event loop while its other writes are still in flight,
    and each of them, on finishing, calls back into the closed loop from a TensorStore
    thread, which can only report it as unraisable (a bare traceback on stderr), for as
    long as the process lives. The failure itself is reported once, as a SaveError."""
    frames = traceback.extract_tb(unraisable.exc_traceback)
    return (unraisable.exc_type is RuntimeError and unraisable.object is None
            and str(unraisable.exc_value) == "Event loop is closed"
            and bool(frames) and all("asyncio" in f.filename for f in frames))


def _without_closed_loop_noise(previous):
    """An unraisable-exception hook that drops `_is_closed_loop_noise` and hands every
    other exception to `previous` unchanged."""
    def hook(unraisable):
        if not _is_closed_loop_noise(unraisable):
            previous(unraisable)
    hook.drops_closed_loop_noise = True
    return hook


def _drop_closed_loop_noise() -> None:
    """Chains `_without_closed_loop_noise` in front of sys.unraisablehook (once). Set when
    a CheckpointManager is made: the noise can start with its first save and outlive it.
    Nothing else is filtered; sys.stderr is left alone."""
    if not getattr(sys.unraisablehook, "drops_closed_loop_noise", False):
        sys.unraisablehook = _without_closed_loop_noise(sys.unraisablehook)


class CheckpointManager:
    """Saves a pytree every `every_steps` steps into `directory`, keeping the last `keep`."""

    def __init__(self, directory: str, *, every_steps: int, keep: int = 3):
        if every_steps <= 0:
            raise ConfigError(f"checkpoint.every_steps must be positive; got {every_steps}.")
        self.every_steps = every_steps
        self.directory = (directory if storage.is_remote(directory)
                          else os.path.abspath(directory))
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
        self._pending = None    # the step of the save in flight, if any
        # The steps on disk that this manager found or saved: a step folder outside them
        # was written by another process.
        self._known = set(run_dir.saved_steps(self.directory))
        for name in ("absl", "asyncio"):
            if _QUIET not in logging.getLogger(name).filters:
                logging.getLogger(name).addFilter(_QUIET)
        _drop_closed_loop_noise()

    def _save_failed(self, e: BaseException) -> SaveError:
        # What is on disk, not what Orbax remembers: a relaunch with a smaller `keep` or a
        # save that failed midway leaves the two apart.
        complete = [s for s in run_dir.saved_steps(self.directory) if s != self._pending]
        kept = (f"{_steps_phrase(complete, (' is', ' are'))} intact: rerun the same command to resume from "
                f"step {max(complete)}" if complete else
                "no earlier checkpoint is on disk: rerun the same command to start again")
        where = f"step {self._pending}" if self._pending is not None else "a step"
        self._pending = None
        # The coroutines of the failed save's other writes are dropped unawaited: one
        # warning each at exit, about the failure just reported.
        warnings.filterwarnings("ignore", message="coroutine .* was never awaited",
                                category=RuntimeWarning)
        return SaveError(f"Saving the checkpoint of {where} into {self.directory!r} failed: "
                         f"{_reason(e)}. {_remedy(e)}; {kept}.")

    def _guarded(self, fn, *args, **kwargs):
        """fn(...), with any error of an asynchronous save as one SaveError."""
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # pylint: disable=broad-except  (Orbax raises many kinds)
            raise self._save_failed(e) from e

    def check_for_errors(self) -> None:
        """Raises SaveError if an asynchronous save that already ended failed."""
        self._guarded(self._manager.check_for_errors)

    def latest_step(self):
        """The newest saved step, or None."""
        return self._manager.latest_step()

    def restore_or(self, state: Any) -> Any:
        """The newest readable checkpoint restored into `state`'s structure, or `state` if
        there is none.

        A newest checkpoint that cannot be read (corrupt or half-written files) is reported
        and the one before it is used; it is left on disk for inspection. If no checkpoint
        can be read, the newest one's error is raised as a ConfigError (typically: it was
        written for another model).
        """
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            return state
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        first_error = None
        for step in steps:
            try:
                restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
            except Exception as e:  # pylint: disable=broad-except  (Orbax raises many kinds)
                first_error = first_error or (step, e)
                continue
            if step != steps[0]:
                bad, e = first_error
                print(f"warning: the checkpoint at step {bad} in {self.directory!r} cannot be "
                      f"read ({type(e).__name__}: {_first_line(e)}); resuming "
                      f"from step {step} instead.", flush=True)
            return restored
        step, e = first_error
        raise ConfigError(
            f"The checkpoint at step {step} in {self.directory!r} cannot be restored into "
            f"this config's model and optimiser ({type(e).__name__}: "
            f"{_first_line(e)}). Resume with the config that wrote it "
            "(config.json beside it), or start in a new --workdir.") from None

    def maybe_save(self, step: int, state: Any, *, force: bool = False) -> bool:
        """Saves at multiples of every_steps (or when forced); True if it saved."""
        if not force and step % self.every_steps:
            return False
        if self._manager.latest_step() == step:
            return False
        self._guarded(self._manager.wait_until_finished)   # the previous save's errors first
        self._pending = step
        # (`step` itself may already be there: on a cluster every process saves each step
        # into this directory, and the first to finish renames its folder into place.)
        foreign = sorted(set(run_dir.saved_steps(self.directory)) - self._known - {step})
        if foreign:
            self._pending = None
            raise SaveError(
                f"Saving the checkpoint of step {step} into {self.directory!r} stopped: "
                f"{_steps_phrase(foreign)} appeared "
                f"there, written by another process. {_ANOTHER_WRITER_FIX}.")
        self._known.add(step)
        return self._guarded(self._manager.save, step, args=ocp.args.StandardSave(state),
                             force=True)

    def read_latest(self) -> tuple[int, dict]:
        """(step, the saved tree as nested dicts of numpy arrays) of the newest readable
        checkpoint, read with the structure recorded in the checkpoint itself: no template,
        so it works for any model or optimiser (evaluation needs no optimiser state).
        Unreadable newer checkpoints are reported and skipped; nothing is written."""
        steps = sorted(self._manager.all_steps(), reverse=True)
        first_error = None
        for step in steps:
            try:
                return step, read_tree(run_dir.checkpoint_item(self.directory, step))
            except Exception as e:  # pylint: disable=broad-except  (Orbax raises many kinds)
                first_error = first_error or (step, e)
                print(f"warning: the checkpoint at step {step} in {self.directory!r} cannot be "
                      f"read ({type(e).__name__}: {_first_line(e)}); trying the "
                      "one before.", flush=True)
        raise ConfigError(f"No readable checkpoint in {self.directory!r}"
                          + (f" (newest error: {first_error[1]})" if first_error else "") + ".")

    def wait(self):
        """Blocks until asynchronous saves are on disk; SaveError if one failed."""
        self._guarded(self._manager.wait_until_finished)
        self._pending = None

    def close(self):
        """Waits for pending saves, then releases Orbax's threads; SaveError if a save
        failed."""
        try:
            self.wait()
        finally:
            self._manager.close()


class _QuietItemMetadata(logging.Filter):
    """Drops Orbax's warning that a step's item folder has no _CHECKPOINT_METADATA of its
    own: `read_tree` reads the item folder directly, and the file is the step's."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Metadata file does not exist")


_QUIET_ITEM_METADATA = _QuietItemMetadata()


def read_tree(path: str) -> dict:
    """A StandardSave'd tree read onto this process's first device, as numpy arrays."""
    if _QUIET_ITEM_METADATA not in logging.getLogger("absl").filters:
        logging.getLogger("absl").addFilter(_QUIET_ITEM_METADATA)
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    with ocp.StandardCheckpointer() as checkpointer:
        meta = checkpointer.metadata(path)
        meta = getattr(meta, "item_metadata", meta)
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one),
                              meta)
        return jax.device_get(checkpointer.restore(path, target))
