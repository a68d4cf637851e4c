"""Faults a long run meets: SIGKILL at any moment, a disk that fills up during a save.

Each test launches whole training processes (`python -m bt_jax.main`), so both are slow;
`make test-slow` (and CI) runs them.
"""
import hashlib
import json
import os
import queue
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config", "configs/digits.py", "--config.batch_size=32",
        "--config.data.image_size=16", "--config.model.width=0.0625",
        "--config.model.projector_dims=(32,32)", "--config.eval.enabled=False",
        "--config.log_every_steps=1", "--config.checkpoint.every_steps=2",
        "--config.checkpoint.keep=2", "--config.data.augment_on=device"]
ENV = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")


# Sets a file-size limit, then becomes the trainer (exec: no fork of this threaded process).
# Writes past the limit then fail with EFBIG, as on a full disk, instead of raising SIGXFSZ.
LIMITED = ("import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
           "limit = int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
           "os.execv(sys.argv[2], sys.argv[2:])")


def _launch(workdir, *extra, file_size_limit=None):
    command = [sys.executable, "-u", "-m", "bt_jax.main", "--workdir", workdir, *TINY, *extra]
    if file_size_limit is not None:
        command = [sys.executable, "-c", LIMITED, str(file_size_limit)] + command
    return subprocess.Popen(command, cwd=ROOT, env=ENV, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def _lines(proc) -> "queue.Queue[str]":
    """The process's output lines, read by a thread (so the test can poll with timeouts)."""
    q = queue.Queue()

    def read():
        for line in proc.stdout:
            q.put(line)
        q.put(None)
    threading.Thread(target=read, daemon=True).start()
    return q


def _temporary_dirs(ckpt_dir) -> set:
    """(name, inode, ctime) of Orbax's temporary directories: a checkpoint being written
    (or one a kill interrupted earlier, until Orbax removes it)."""
    try:
        names = [n for n in os.listdir(ckpt_dir) if "tmp" in n]
    except FileNotFoundError:
        return set()
    out = set()
    for name in names:
        try:
            st = os.stat(os.path.join(ckpt_dir, name))
        except FileNotFoundError:
            continue
        out.add((name, st.st_ino, st.st_ctime_ns))
    return out


def _sha(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.mark.slow   # about 20 process launches: 3 to 6 minutes on a 2-core CPU
def test_random_sigkills_never_lose_work_and_the_result_is_bit_identical(tmp_path):
    steps = ["--config.num_steps=80"]
    whole = str(tmp_path / "uninterrupted")
    proc = _launch(whole, *steps)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    want = _sha(os.path.join(whole, "backbone.msgpack"))
    with open(os.path.join(whole, "metrics.jsonl")) as f:   # the step time on this machine
        step_s = float(np.median([json.loads(line)["step_time_s"] for line in f][1:]))

    workdir = str(tmp_path / "killed")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    rng = np.random.default_rng(0)
    kills, mid_save, launches = 0, 0, 0
    while kills < 12 and launches < 40:
        launches += 1
        stale = _temporary_dirs(ckpt_dir)      # left by an earlier kill
        proc = _launch(workdir, *steps)
        lines = _lines(proc)
        # Wait for the training loop (the first progress line), then kill at a random
        # moment: half the kills at a random delay, half as soon as a save is in flight.
        started = False
        while not started:
            line = lines.get(timeout=300)
            if line is None or "holds a finished run" in line:
                break
            started = line.startswith("step ")
        if not started or proc.poll() is not None:
            break           # the run is finished
        if kills % 2 == 0:   # anywhere in the next 6 steps' time
            deadline = time.monotonic() + rng.uniform(0.0, 6 * step_s)
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.005)
        else:
            deadline = time.monotonic() + 30
            while (not _temporary_dirs(ckpt_dir) - stale and proc.poll() is None
                   and time.monotonic() < deadline):
                time.sleep(0.0005)
            time.sleep(rng.uniform(0.0, 0.01))
        if proc.poll() is not None:
            break           # the run ended before the kill
        proc.kill()         # SIGKILL: no handler, no cleanup
        proc.wait(60)
        kills += 1
        # Mid-save: this process's temporary directory was left behind.
        mid_save += bool(_temporary_dirs(ckpt_dir) - stale)
    proc.wait(600)
    final = _launch(workdir, *steps)       # whatever state the kills left, finish the run
    out, _ = final.communicate(timeout=600)
    assert final.returncode == 0, out[-3000:]
    print(f"{kills} kills, {mid_save} during a checkpoint save, {launches + 1} launches")
    assert kills >= 10, (kills, launches)
    assert mid_save >= 1, (kills, mid_save)
    assert _sha(os.path.join(workdir, "backbone.msgpack")) == want
    assert not [f for f in os.listdir(workdir) if f.endswith(".tmp")]


def _tree_digests(directory) -> dict:
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, directory)] = _sha(path)
    return out


@pytest.mark.slow   # three training processes: about a minute on a 2-core CPU
def test_a_save_that_runs_out_of_space_stops_in_one_line_and_keeps_the_last_checkpoint(
        tmp_path):
    workdir = str(tmp_path / "run")
    first = _launch(workdir, "--config.num_steps=4")
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out[-3000:]
    ckpt4 = os.path.join(workdir, "checkpoints", "4")
    before = _tree_digests(ckpt4)
    # The checkpoint's data file is larger than 64 KiB; metrics, config and events are not.
    # RLIMIT_FSIZE makes every larger write fail as a full disk would (EFBIG, not ENOSPC).
    full = _launch(workdir, "--config.num_steps=8", file_size_limit=64 * 1024)
    out, _ = full.communicate(timeout=600)
    assert full.returncode == 2, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith(("error", "Traceback"))]
    assert len(errors) == 1, out[-3000:]
    assert "Saving the checkpoint of step 6" in errors[0]
    assert "failed: File too large (errno 27)" in errors[0]
    assert "the checkpoints of steps 2 and 4 are intact" in errors[0]   # both on disk
    assert "resume from step 4" in errors[0]
    assert "Traceback" not in out
    assert _tree_digests(ckpt4) == before
    assert "6" not in os.listdir(os.path.join(workdir, "checkpoints"))
    resumed = _launch(workdir, "--config.num_steps=8")
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out[-3000:]
    assert "Resumed from step 4 of 8." in out
    assert sorted(d for d in os.listdir(os.path.join(workdir, "checkpoints"))
                  if d.isdigit()) == ["6", "8"]
