"""A gs:// workdir against a GCS emulator on 127.0.0.1 (tests/gcs_emulator.py): the trainer
writes everything into the bucket and nothing onto the local disk, is killed, resumes,
and the evaluation CLI, load_encoder and bt_jax.convert read from the bucket. The clients
find the emulator through STORAGE_EMULATOR_HOST alone (bt_jax.io.storage.use_emulators)."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "bt-jax-test"
TINY = ["--config", os.path.join(ROOT, "configs", "digits.py"), "--config.batch_size=32",
        "--config.data.image_size=16", "--config.model.width=0.0625",
        "--config.model.projector_dims=(32,32)", "--config.log_every_steps=1",
        "--config.checkpoint.every_steps=5", "--config.eval.linear_protocol=linear_fast",
        "--config.eval.linear_sgd.epochs=0", "--config.eval.finetune.fractions=()",
        "--config.eval.tsne_points=0", "--config.eval.baselines=False",
        "--config.monitor.diagnostics_every_steps=0"]

pytest.importorskip("gcp_storage_emulator", reason="pip install gcp-storage-emulator")
pytest.importorskip("gcsfs", reason="pip install gcsfs")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def emulator():
    """The emulator's URL, serving BUCKET for this module."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "gcs_emulator.py"),
                             "--port", str(port), "--bucket", BUCKET],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert "GCS emulator on" in proc.stdout.readline()
        for _ in range(50):   # until it answers
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


def _env(url):
    env = {k: v for k, v in os.environ.items()
           if k not in ("EPATH_USE_TF", "TENSORSTORE_GCS_HTTP_URL",
                        "GOOGLE_AUTH_TOKEN_FOR_TESTING")}
    return dict(env, STORAGE_EMULATOR_HOST=url, JAX_PLATFORMS="cpu",
                PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""))


def _run(url, cwd, *args, timeout=600):
    return subprocess.run([sys.executable, *args], cwd=cwd, env=_env(url),
                          capture_output=True, text=True, timeout=timeout)


def _listing(url, path):
    r = _run(url, ROOT, "-c", "import json, bt_jax; from bt_jax.io import storage; "
             f"print(json.dumps(sorted(storage.listdir({path!r}))))")
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])   # a list of names


@pytest.mark.slow    # three short runs and an evaluation: about 3 minutes on 2 cores
def test_a_gs_workdir_trains_resumes_evaluates_and_leaves_the_local_disk_alone(
        emulator, tmp_path):
    workdir = f"gs://{BUCKET}/runs/tiny"
    local = tmp_path / "cwd"          # every command runs here: it must stay empty
    local.mkdir()
    command = [sys.executable, "-m", "bt_jax.main", "--workdir", workdir, *TINY,
               "--config.num_steps=30"]
    first = subprocess.Popen(command, cwd=local, env=_env(emulator), stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    for line in first.stdout:
        if line.startswith("step     12/"):
            break
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert "5" in _listing(emulator, f"{workdir}/checkpoints")
    # The lock of the killed run is an object nobody refreshes: on this host its process
    # is gone, so the rerun takes it over at once.
    resumed = subprocess.run(command, cwd=local, env=_env(emulator), capture_output=True,
                             text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # From the newest complete checkpoint: step 10's may still have been uploading when
    # the process died (Orbax marks a step complete on an object store only at its end).
    restart = re.search(r"Resumed from step (\d+) of 30\.", resumed.stdout)
    assert restart and int(restart.group(1)) in (5, 10), resumed.stdout[:3000]
    names = _listing(emulator, workdir)
    for name in ("config.json", "metrics.jsonl", "results.json", "backbone.msgpack",
                 "backbone.json", "training_curves.png", "checkpoints"):
        assert name in names, (name, names)
    assert "run.lock" not in names
    assert any(n.startswith("events.out.tfevents.") for n in names)
    steps = [json.loads(line)["step"] for line in _run(
        emulator, ROOT, "-c", "import bt_jax; from bt_jax.io import storage; "
        f"print(storage.read_text({workdir + '/metrics.jsonl'!r}))").stdout.splitlines()
        if line.startswith("{") and '"loss"' in line]
    assert steps == list(range(1, 31))       # rows after the checkpoint logged once

    evaluated = _run(emulator, local, "-m", "bt_jax.evaluate", "--workdir", workdir,
                     "--config.eval.knn.k=10")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "Barlow Twins" in evaluated.stdout

    encoded = _run(emulator, local, "-c", "import numpy as np; import bt_jax; "
                   "from bt_jax.io.export import load_encoder; "
                   f"f = load_encoder({workdir!r})(np.zeros((2, 16, 16, 1), np.uint8)); "
                   "print(f.shape)")
    assert encoded.returncode == 0, encoded.stderr[-2000:]
    assert encoded.stdout.strip().endswith("(2, 32)")

    converted = _run(emulator, local, "-m", "bt_jax.convert", f"{workdir}/backbone.msgpack",
                     f"gs://{BUCKET}/exports/tiny.safetensors")
    assert converted.returncode == 0, converted.stderr[-2000:]
    assert "tiny.safetensors" in _listing(emulator, f"gs://{BUCKET}/exports")

    weights = f"gs://{BUCKET}/exports/tiny.safetensors"
    started = _run(emulator, local, "-m", "bt_jax.main", "--workdir",
                   f"gs://{BUCKET}/runs/from_weights", *TINY, "--config.num_steps=2",
                   "--config.eval.enabled=False", f"--config.model.init_from={weights}")
    assert started.returncode == 0, started.stderr[-3000:]
    assert f"Initialised the backbone from {weights!r}." in started.stdout  # no projector
    assert os.listdir(local) == []      # nothing on the local disk


def test_an_unknown_scheme_or_an_unreachable_bucket_is_one_line_before_anything_is_written(
        emulator, tmp_path):
    for workdir, expected in (("hdfs://cluster/run", "unknown storage scheme 'hdfs://'"),
                              ("gs://no-such-bucket/run", "cannot be reached")):
        r = _run(emulator, tmp_path, "-m", "bt_jax.main", "--workdir", workdir, *TINY,
                 "--config.num_steps=2", timeout=300)
        assert r.returncode == 2, r.stderr[-2000:]
        lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and expected in lines[0], r.stderr[-2000:]
    assert os.listdir(tmp_path) == []


def test_the_workdir_lock_is_an_exclusive_object(emulator):
    code = f"""
import bt_jax
from bt_jax.io.run_lock import WorkdirLock, WorkdirLocked
first = WorkdirLock("gs://{BUCKET}/locked").acquire()
try:
    WorkdirLock("gs://{BUCKET}/locked").acquire()
    print("second: taken")
except WorkdirLocked as e:
    print("second: refused", "in use by process" in str(e))
first.release()
again = WorkdirLock("gs://{BUCKET}/locked").acquire()
print("after release: taken")
again.release()
"""
    r = _run(emulator, ROOT, "-c", code, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "second: refused True" in r.stdout and "after release: taken" in r.stdout
