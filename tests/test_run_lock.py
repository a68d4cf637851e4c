"""One writer per workdir (bt_jax/run_lock.py): both ways of holding the lock, a second
locker refused with one line naming the holder, a stale lock (SIGKILLed holder) taken over,
and the CLI's refusal that leaves the holder's files untouched."""
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from bt_jax import run_lock
from bt_jax.run_lock import WorkdirLock, WorkdirLocked

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ["fcntl", "create"]

HOLDER = """
import sys, time
from bt_jax.run_lock import WorkdirLock
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


def _digests(folder) -> dict:
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            p = os.path.join(root, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_training_into_a_workdir_another_process_holds_stops_with_one_line(tmp_path):
    """A second launch into a workdir held by a running training: one line naming the
    holder, exit status 2, and not one file of the first run changed."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text('{"seed": 0}')
    (workdir / "metrics.jsonl").write_text('{"step": 5, "loss": 1.0}\n')
    holder = _holder(str(workdir), "fcntl")
    try:
        before = _digests(workdir)
        r = subprocess.run([sys.executable, "-m", "bt_jax.main", "--config", "configs/digits.py",
                            "--workdir", str(workdir), "--config.num_steps=2",
                            "--config.eval.enabled=False"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 2, r.stderr[-2000:]
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: --workdir"), r.stderr
        assert f"in use by process {holder.pid} on host" in lines[0]
        assert _digests(workdir) == before
    finally:
        holder.kill()
        holder.wait()
