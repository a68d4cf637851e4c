"""Checkpoints: a corrupt newest checkpoint falls back to the one before; SIGTERM saves."""
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bt_jax.io import checkpoint as ckpt_lib
from bt_jax.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _state(value):
    return {"w": jnp.full((4, 3), value, jnp.float32), "step": jnp.array(int(value), jnp.int32)}


def _saved(directory, steps):
    manager = ckpt_lib.CheckpointManager(directory, every_steps=1, keep=5)
    for step in steps:
        manager.maybe_save(step, _state(step))
    manager.close()


def _corrupt_newest(directory, step):
    """Overwrites every file of the step's checkpoint with garbage of the same size."""
    for root, _, files in os.walk(os.path.join(directory, str(step))):
        for name in files:
            path = os.path.join(root, name)
            size = os.path.getsize(path)
            with open(path, "wb") as f:
                f.write(b"\x00garbage" * (size // 8 + 1))


def test_restore_reads_the_newest_checkpoint(tmp_path):
    _saved(str(tmp_path), [1, 2, 3])
    manager = ckpt_lib.CheckpointManager(str(tmp_path), every_steps=1)
    restored = manager.restore_or(_state(0))
    assert int(restored["step"]) == 3 and float(restored["w"][0, 0]) == 3.0
    manager.close()


def test_a_corrupt_newest_checkpoint_is_reported_and_the_previous_one_used(tmp_path, capsys):
    _saved(str(tmp_path), [1, 2])
    _corrupt_newest(str(tmp_path), 2)
    manager = ckpt_lib.CheckpointManager(str(tmp_path), every_steps=1)
    restored = manager.restore_or(_state(0))
    manager.close()
    assert int(restored["step"]) == 1
    np.testing.assert_array_equal(restored["w"], np.ones((4, 3)))
    out = capsys.readouterr().out
    assert "step 2" in out and "cannot be read" in out and "resuming from step 1" in out
    assert os.path.isdir(tmp_path / "2")   # left on disk for inspection


def test_a_half_written_checkpoint_is_ignored(tmp_path):
    """A save cut short leaves Orbax's temporary directory, never a step directory."""
    _saved(str(tmp_path), [1, 2])
    partial = tmp_path / "3.orbax-checkpoint-tmp-1795560000"
    os.makedirs(partial / "default")
    (partial / "default" / "_METADATA").write_bytes(b"{\"tree_metadata\": ")
    manager = ckpt_lib.CheckpointManager(str(tmp_path), every_steps=1)
    assert manager.latest_step() == 2
    assert int(manager.restore_or(_state(0))["step"]) == 2
    manager.close()


def test_no_readable_checkpoint_is_a_clear_error(tmp_path):
    _saved(str(tmp_path), [1])
    manager = ckpt_lib.CheckpointManager(str(tmp_path), every_steps=1)
    with pytest.raises(ConfigError, match=r"step 1 .* cannot be restored .* new --workdir"):
        manager.restore_or({"w": jnp.zeros((5, 5)), "step": jnp.zeros([], jnp.int32)})
    manager.close()


@pytest.mark.slow
def test_sigterm_saves_the_step_reached_and_a_rerun_resumes_from_it(tmp_path):
    workdir = str(tmp_path / "run")
    args = [sys.executable, "-m", "bt_jax.main", "--config", "configs/digits.py",
            "--workdir", workdir, "--config.num_steps=400", "--config.log_every_steps=1",
            "--config.checkpoint.every_steps=1000", "--config.batch_size=32",
            "--config.data.image_size=16", "--config.model.width=0.0625",
            "--config.model.projector_dims=(32,32)", "--config.eval.linear_sgd.epochs=1",
            "--config.eval.baselines=False", "--config.eval.finetune.fractions=()"]
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    head = []
    for line in proc.stdout:   # wait until training runs
        head.append(line)
        if line.startswith("step      3/"):
            break
    assert head[0].strip() == "Config: configs/digits.py"   # then the command line's changes
    assert "  batch_size: 256 -> 32\n" in head and "  num_steps: 0 -> 400\n" in head
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Stopped by SIGTERM at step" in err and "Traceback" not in err
    step = int(err.split("Stopped by SIGTERM at step ")[1].split(";")[0])
    assert 3 <= step < 400
    assert str(step) in os.listdir(os.path.join(workdir, "checkpoints"))
    rerun = subprocess.run(args[:7] + ["--config.num_steps=" + str(step + 2)] + args[8:],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"Resumed from step {step} of {step + 2}." in rerun.stdout


def _restore_raw(checkpoint_dir):
    """Every array of a saved TrainState, as saved (no target structure needed)."""
    import orbax.checkpoint as ocp
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(os.path.join(os.path.abspath(checkpoint_dir), "default"))


@pytest.mark.slow
def test_a_run_killed_with_sigkill_and_resumed_ends_bit_identical(tmp_path):
    args = ["--config", "configs/digits.py", "--config.num_steps=12",
            "--config.log_every_steps=1", "--config.checkpoint.every_steps=3",
            "--config.batch_size=32", "--config.data.image_size=16",
            "--config.model.width=0.0625", "--config.model.projector_dims=(32,32)",
            "--config.eval.enabled=False"]
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")

    def cli(workdir, **kw):
        return subprocess.Popen([sys.executable, "-m", "bt_jax.main", "--workdir", workdir,
                                 *args], cwd=ROOT, env=env, text=True, **kw)

    whole = str(tmp_path / "uninterrupted")
    assert cli(whole, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).wait(300) == 0
    killed = str(tmp_path / "killed")
    proc = cli(killed, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    for line in proc.stdout:
        if line.startswith("step      8/"):   # past the checkpoint of step 6
            proc.kill()                        # SIGKILL: no handler runs
            break
    proc.wait(60)
    assert proc.returncode == -signal.SIGKILL
    resumed = cli(killed, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    # From step 6, or 3 if the kill came before the asynchronous save of step 6 completed.
    assert "Resumed from step 6 of 12." in out or "Resumed from step 3 of 12." in out, out
    want = _restore_raw(os.path.join(whole, "checkpoints", "12"))
    got = _restore_raw(os.path.join(killed, "checkpoints", "12"))
    leaves_want, leaves_got = jax.tree.leaves(want), jax.tree.leaves(got)
    assert jax.tree.structure(want) == jax.tree.structure(got) and len(leaves_want) > 50
    for a, b in zip(leaves_want, leaves_got):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))   # bit for bit


def test_a_failed_save_is_reported_with_the_operating_systems_reason():
    e = ValueError("OUT_OF_RANGE: Error writing \"w/0\" in OCDBT database at local file "
                   "\"/x/4.orbax-checkpoint-tmp/\": Failed to write 9 bytes to file 5: No space "
                   "left on device [os_error_code='28']")
    assert ckpt_lib._reason(e) == "No space left on device (errno 28)"
    assert ckpt_lib._reason(OSError(122, "Disk quota exceeded")) == "Disk quota exceeded (errno 122)"
    assert ckpt_lib._reason(RuntimeError("boom\nmore")) == "RuntimeError: boom"


def _unraisable_of(fn, called_from_c: bool = False):
    """sys.unraisablehook's argument for what fn() raises, as a C thread reports it
    (PyErr_WriteUnraisable(NULL): no object, no message). called_from_c: the traceback
    starts where C called into asyncio (without this test's own frames)."""
    import types
    try:
        fn()
    except BaseException as e:  # pylint: disable=broad-except
        tb = e.__traceback__
        while called_from_c and "asyncio" not in tb.tb_frame.f_code.co_filename:
            tb = tb.tb_next
        return types.SimpleNamespace(exc_type=type(e), exc_value=e, exc_traceback=tb,
                                     err_msg=None, object=None)
    raise AssertionError("fn() raised nothing")


def test_only_the_closed_loop_noise_of_a_failed_save_is_dropped(monkeypatch):
    """A failed save's writes call back into Orbax's closed event loop from TensorStore's
    threads, each an unraisable RuntimeError: those are dropped; every other unraisable
    exception reaches the previous hook, and sys.stderr is never replaced."""
    import asyncio
    import sys
    import threading
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    stderr = sys.stderr
    ckpt_lib._drop_closed_loop_noise()
    ckpt_lib._drop_closed_loop_noise()           # idempotent: one filter, not two
    hook = sys.unraisablehook
    assert hook is not seen.append and sys.stderr is stderr
    loop = asyncio.new_event_loop()
    loop.close()
    noise = []
    thread = threading.Thread(target=lambda: noise.append(_unraisable_of(
        lambda: loop.call_soon_threadsafe(print), called_from_c=True)))
    thread.start()
    thread.join()
    hook(noise[0])
    assert seen == []                            # dropped
    real = [_unraisable_of(lambda: 1 / 0),
            _unraisable_of(lambda: (_ for _ in ()).throw(RuntimeError("Event loop is closed")))]
    for u in real:   # another error; the same message raised outside asyncio
        hook(u)
    assert seen == real
    with_object = _unraisable_of(lambda: loop.call_soon_threadsafe(print), called_from_c=True)
    with_object.object = object()               # reported for an object: not the noise
    hook(with_object)
    assert seen[-1] is with_object
