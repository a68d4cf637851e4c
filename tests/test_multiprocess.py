"""Two processes with 2 CPU devices each train exactly like one process with 4 devices."""
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from bt_jax import checkpoint as ckpt_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--config", "configs/digits.py", "--config.num_steps=4", "--config.log_every_steps=1",
        "--config.checkpoint.every_steps=2", "--config.batch_size=32",
        "--config.data.image_size=16", "--config.model.width=0.0625",
        "--config.model.projector_dims=(32,32)", "--config.eval.enabled=False"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    return dict(os.environ, JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _launch(workdir, process_id, port, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "bt_jax.main", "--workdir", workdir, "--jax_distributed",
         f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
         f"--process_id={process_id}", *ARGS, *kw.pop("extra", [])],
        cwd=ROOT, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _restore_on_one_device(checkpoint_dir):
    """Every array of a saved TrainState, as numpy arrays."""
    return ckpt_lib.read_tree(os.path.join(os.path.abspath(checkpoint_dir), "default"))


@pytest.mark.slow
def test_two_processes_match_one_process_with_as_many_devices(tmp_path):
    single = str(tmp_path / "one_process")
    r = subprocess.run([sys.executable, "-m", "bt_jax.main", "--workdir", single, *ARGS],
                       cwd=ROOT, env=_env(4), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    assert "batch 32 over 4 device(s)" in r.stdout
    multi = str(tmp_path / "two_processes")
    port = _free_port()
    procs = [_launch(multi, i, port) for i in range(2)]
    # Generous: next to another test's processes on 2 cores, this took over 5 minutes.
    outs = [p.communicate(timeout=900) for p in procs]
    # Every process's stderr: one that fails leaves the others timing out in a collective.
    assert [p.returncode for p in procs] == [0, 0], "\n".join(
        f"process {i}: {err[-2500:]}" for i, (_, err) in enumerate(outs))
    assert "batch 32 over 4 device(s)" in outs[0][0] and "step      4/4" in outs[0][0]
    assert "step      1/4" not in outs[1][0]   # only process 0 logs progress
    assert sorted(os.listdir(os.path.join(multi, "checkpoints"))) == ["2", "4"]
    want = _restore_on_one_device(os.path.join(single, "checkpoints", "4"))
    got = _restore_on_one_device(os.path.join(multi, "checkpoints", "4"))
    assert jax.tree.structure(want) == jax.tree.structure(got)
    # Equal up to float rounding (gloo sums across processes in another order): per leaf,
    # |got - want| / |want| < 1e-4. Processes reading the wrong rows would differ by ~1e-1.
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert np.linalg.norm(b - a) <= 1e-4 * max(np.linalg.norm(a), 1e-6), a.shape


@pytest.mark.slow
def test_a_dead_process_makes_the_others_stop_instead_of_hanging(tmp_path):
    args = [a if a != "--config.num_steps=4" else "--config.num_steps=5000" for a in ARGS]
    port = _free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "bt_jax.main", "--workdir", str(tmp_path / "run"),
         "--jax_distributed", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
         f"--process_id={i}", "--heartbeat_timeout_seconds=10", *args],
        cwd=ROOT, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for i in range(2)]
    for line in procs[0].stdout:
        if line.startswith("step      3/"):
            break
    procs[1].kill()
    try:
        procs[0].communicate(timeout=120)   # heartbeat 10 s: it must not wait for ever
    except subprocess.TimeoutExpired:
        procs[0].kill()
        raise AssertionError("process 0 hung after process 1 died") from None
    assert procs[0].returncode != 0
