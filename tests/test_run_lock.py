"""One writer per workdir (bt_jax/io/run_lock.py): both ways of holding the lock, a second
locker refused with one line naming the holder, a stale lock (SIGKILLed holder) taken over,
and the CLI's refusal that leaves the holder's files untouched."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from bt_jax.io import run_lock
from bt_jax.io.run_lock import WorkdirLock, WorkdirLocked
from stderr import own_lines
from workdirs import digests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ["fcntl", "create"]

HOLDER = """
import sys, time
from bt_jax.io.run_lock import WorkdirLock
lock = WorkdirLock(sys.argv[1], purpose="training", method=sys.argv[2]).acquire()
print("held", flush=True)
time.sleep(600)
"""


def _holder(workdir: str, method: str) -> subprocess.Popen:
    """A process that takes workdir's lock and keeps it (until killed)."""
    p = subprocess.Popen([sys.executable, "-c", HOLDER, workdir, method], cwd=ROOT,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


@pytest.mark.parametrize("method", METHODS)
def test_a_second_locker_in_the_same_process_is_refused_with_one_line(tmp_path, method):
    workdir = str(tmp_path / "run")
    first = WorkdirLock(workdir, method=method).acquire()
    with pytest.raises(WorkdirLocked) as e:
        WorkdirLock(workdir, method=method).acquire()
    msg = str(e.value)
    assert "\n" not in msg and f"process {os.getpid()}" in msg
    assert repr(socket.gethostname()) in msg and "another --workdir" in msg
    first.release()
    assert not os.path.exists(os.path.join(workdir, run_lock.LOCK_FILE))
    WorkdirLock(workdir, method=method).acquire().release()   # free again


@pytest.mark.parametrize("method", METHODS)
def test_a_live_holder_in_another_process_blocks_and_a_killed_one_does_not(tmp_path, method):
    workdir = str(tmp_path / "run")
    holder = _holder(workdir, method)
    try:
        with pytest.raises(WorkdirLocked, match=f"process {holder.pid} on host"):
            WorkdirLock(workdir, method=method).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # SIGKILL leaves run.lock behind (nothing removed it), but its holder is gone
    assert os.path.exists(os.path.join(workdir, run_lock.LOCK_FILE))
    lock = WorkdirLock(workdir, method=method).acquire()
    assert lock.record["pid"] == os.getpid()
    lock.release()


def test_a_record_of_a_process_on_another_host_is_stale_only_without_heartbeat(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    path = workdir / run_lock.LOCK_FILE
    record = {"host": "some-other-host", "pid": 1, "started": time.time(),
              "heartbeat": time.time(), "command": "python -m bt_jax.main", "purpose": "training"}
    path.write_text(json.dumps(record))
    with pytest.raises(WorkdirLocked, match="process 1 on host 'some-other-host'"):
        WorkdirLock(str(workdir), method="create").acquire()
    record["heartbeat"] = time.time() - run_lock.STALE_SECONDS - 1
    path.write_text(json.dumps(record))
    lock = WorkdirLock(str(workdir), method="create").acquire()
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()


def test_a_reused_pid_does_not_keep_a_dead_holder_alive():
    me = run_lock.own_record("training")
    assert not run_lock.is_stale(me)
    assert run_lock.is_stale({**me, "pid_start": me["pid_start"] + 1})   # another process
    assert run_lock.is_stale({**me, "pid": 2 ** 22 + 7})                 # no such process


def test_a_failed_run_leaves_no_folder_the_lock_created(tmp_path):
    workdir = tmp_path / "a" / "b" / "run"
    with pytest.raises(RuntimeError):
        with WorkdirLock(str(workdir)):
            assert workdir.is_dir()
            raise RuntimeError("a check failed")
    assert not (tmp_path / "a").exists()
    with WorkdirLock(str(workdir)):
        (workdir / "config.json").write_text("{}")
    assert sorted(os.listdir(workdir)) == ["config.json"]     # a run that ended: lock gone
    with pytest.raises(RuntimeError):
        with WorkdirLock(str(workdir)):
            raise RuntimeError("failed, but the workdir holds a run")
    assert sorted(os.listdir(workdir)) == ["config.json"]




def test_training_into_a_workdir_another_process_holds_stops_with_one_line(tmp_path):
    """A second launch into a workdir held by a running training: one line naming the
    holder, exit status 2, and not one file of the first run changed."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text('{"seed": 0}')
    (workdir / "metrics.jsonl").write_text('{"step": 5, "loss": 1.0}\n')
    holder = _holder(str(workdir), "fcntl")
    try:
        before = digests(workdir)
        r = subprocess.run([sys.executable, "-m", "bt_jax.main", "--config", "configs/digits.py",
                            "--workdir", str(workdir), "--config.num_steps=2",
                            "--config.eval.enabled=False"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 2, r.stderr[-2000:]
        lines = own_lines(r.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: --workdir"), r.stderr
        assert f"in use by process {holder.pid} on host" in lines[0]
        assert digests(workdir) == before
    finally:
        holder.kill()
        holder.wait()


TINY = ["--config", "configs/digits.py", "--config.batch_size=32",
        "--config.data.image_size=16", "--config.model.width=0.0625",
        "--config.model.projector_dims=(32,32)", "--config.eval.enabled=False",
        "--config.log_every_steps=1", "--config.checkpoint.every_steps=5",
        "--config.data.augment_on=device"]
ENV = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")


def _train(workdir: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bt_jax.main", *TINY, "--workdir", workdir,
                             *args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_rows(path: str, rows: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    start = time.time()
    while time.time() - start < timeout:
        if os.path.exists(path) and sum(1 for _ in open(path)) >= rows:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError(f"no {rows} rows in {path} after {timeout} s")


def _steps(workdir: str) -> list:
    return [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))]


@pytest.mark.slow   # three training processes of a tiny model: about 2 minutes
def test_two_trainings_into_one_workdir_and_a_rerun_after_sigkill(tmp_path):
    """A second training launched into a running one's workdir stops with one line, and the
    first ends as if alone (its config, one metrics row per step). Killed by SIGKILL, its
    lock is stale: the rerun takes it, resumes, and metrics.jsonl has each step once."""
    workdir = str(tmp_path / "run")
    first = _train(workdir, "--config.num_steps=40", "--config.optim.lr_weights=0.2")
    _wait_for_rows(os.path.join(workdir, "metrics.jsonl"), 2, first)
    second = _train(workdir, "--config.num_steps=40", "--config.optim.lr_weights=0.05")
    _, err = second.communicate(timeout=300)
    assert second.returncode == 2, err[-2000:]
    lines = own_lines(err)
    assert len(lines) == 1 and f"in use by process {first.pid}" in lines[0], err[-2000:]
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    assert json.load(open(os.path.join(workdir, "config.json")))["optim"]["lr_weights"] == 0.2
    assert _steps(workdir) == list(range(1, 41))
    assert not os.path.exists(os.path.join(workdir, run_lock.LOCK_FILE))
    # trained further, killed mid-run: the rerun is not blocked by the lock it left
    third = _train(workdir, "--config.num_steps=200")
    _wait_for_rows(os.path.join(workdir, "metrics.jsonl"), 40 + 13, third)
    third.kill()
    third.wait()
    assert os.path.exists(os.path.join(workdir, run_lock.LOCK_FILE))
    rerun = _train(workdir, "--config.num_steps=200")
    out, err = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, err[-3000:]
    assert "Resumed from step" in out
    assert _steps(workdir) == list(range(1, 201))
