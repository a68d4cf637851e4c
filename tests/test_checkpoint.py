"""Checkpoints: a corrupt newest checkpoint falls back to the one before; SIGTERM saves."""
import os
import signal
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from bt_jax import checkpoint as ckpt_lib
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


def test_no_readable_checkpoint_is_a_clear_error(tmp_path):
    _saved(str(tmp_path), [1])
    manager = ckpt_lib.CheckpointManager(str(tmp_path), every_steps=1)
    with pytest.raises(ConfigError, match=r"step 1 .* cannot be restored .* new --workdir"):
        manager.restore_or({"w": jnp.zeros((5, 5)), "step": jnp.zeros([], jnp.int32)})
    manager.close()


def test_sigterm_saves_the_step_reached_and_a_rerun_resumes_from_it(tmp_path):
    workdir = str(tmp_path / "run")
    args = [sys.executable, "-m", "bt_jax.main", "--config", "configs/digits.py",
            "--workdir", workdir, "--config.num_steps=400", "--config.log_every_steps=1",
            "--config.checkpoint.every_steps=1000", "--config.batch_size=32",
            "--config.data.image_size=16", "--config.model.width=0.0625",
            "--config.model.projector_dims=(32,32)", "--config.eval.linear_epochs=1",
            "--config.eval.baselines=False"]
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
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"Resumed from step {step} of {step + 2}." in rerun.stdout
