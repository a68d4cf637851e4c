"""End to end: the CLI trains, checkpoints, resumes, evaluates; bad input fails clearly."""
import json
import os
import subprocess
import sys

import flax.serialization
import jax
import numpy as np
import pytest

from bt_jax import config as config_lib
from bt_jax.io import export
from bt_jax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny(num_steps):
    c = config_lib.base_config()
    c.batch_size = 64
    c.num_steps = num_steps
    c.log_every_steps = 2
    c.data.name = "digits"
    c.data.image_size = 16
    c.data.augment.blur_sigma = (0.1, 1.0)
    c.model.backbone = "resnet18"
    c.model.stem = "cifar"
    c.model.width = 0.0625
    c.model.projector_dims = (32, 32)
    c.optim.warmup_epochs = 0
    c.checkpoint.every_steps = 2
    c.eval.linear_protocol = "linear_fast"
    c.eval.linear_sgd.epochs = 0       # the SGD probe: on in the two tests that check it
    c.eval.knn.k = 20
    c.eval.linear_fast.max_iter = 50
    c.eval.finetune.fractions = ()     # tested on its own (test_evaluate.py, the evaluate CLI)
    c.eval.tsne_points = 0
    c.monitor.diagnostics_every_steps = 2
    return c


@pytest.mark.slow    # a whole training run: over a minute on this 2-core CPU; `make test-slow` (and CI) runs it
def test_train_and_evaluate_writes_every_artifact_and_resumes(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    c = _tiny(3)
    c.eval.linear_protocol = "linear_sgd"
    c.eval.linear_sgd.epochs = 2
    results = train.train_and_evaluate(c, workdir)
    out = capsys.readouterr().out
    assert "step      2/3" in out and "pairs/s" in out and "ETA" in out
    assert "Barlow Twins" in out and "random init" in out and "pixels" in out
    for name in ("config.json", "metrics.jsonl", "results.json", "backbone.msgpack",
                 "backbone.json", "training_curves.png", "diagnostics.jsonl", "spectrum.png",
                 "cross_correlation.png"):
        assert os.path.exists(os.path.join(workdir, name)), name
    for key in ("linear_fast_top1", "linear_sgd_top1", "linear_top5", "knn_top5",
                "online_linear_top1"):
        assert 0.0 <= results[key] <= 1.0, key
    assert results["linear_top1"] == results["linear_sgd_top1"]   # eval.linear_protocol
    assert results["diagnostics"]["test_features_effective_rank"] > 1.0
    diag = [json.loads(line) for line in open(os.path.join(workdir, "diagnostics.jsonl"))]
    assert [r["step"] for r in diag] == [2, 3]
    assert all(r["embedding_effective_rank"] >= 1.0 for r in diag)
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
    saved = json.load(open(os.path.join(workdir, "results.json")))
    assert saved == json.loads(json.dumps(results))
    for r in (saved, saved["baselines"]["random_init"], saved["baselines"]["pixels"]):
        assert 0.0 <= r["linear_top1"] <= 1.0 and 0.0 <= r["knn_top1"] <= 1.0
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == [2, 3]
    assert all(r["loss"] > 0 and r["pairs_per_s"] > 0 and r["step_time_s"] > 0 for r in rows)
    assert all(r["probe_loss"] > 0 and 0 <= r["probe_top1"] <= 1 for r in rows)
    assert "online probe on" in out and "probe acc" in out
    assert [r["epoch"] for r in rows] == pytest.approx([2 / 22, 3 / 22])   # 1438 // 64 = 22
    for r in rows:   # the cross-correlation's diagonal mean and off-diagonal RMS
        assert -1.0 <= r["c_diag_mean"] <= 1.0 and 0.0 <= r["c_offdiag_rms"] <= 1.0
        d = 32   # projector_dims[-1]: on_diag = sum (1 - C_ii)^2 >= d (1 - mean C_ii)^2
        assert r["on_diag"] >= d * (1 - r["c_diag_mean"]) ** 2 - 1e-3
        assert r["off_diag"] == pytest.approx(d * (d - 1) * r["c_offdiag_rms"] ** 2, rel=1e-4)
    assert "(epoch 0.14)" in out
    tiny = _tiny(3)
    lr, bias_lr = train.learning_rate_schedules(tiny.optim, tiny.batch_size,
                                                steps_per_epoch=22, total_steps=3)
    assert rows[0]["learning_rate"] == pytest.approx(float(lr(1)))  # rate used by step 2
    assert rows[0]["bias_learning_rate"] == pytest.approx(float(bias_lr(1)))
    # backbone.msgpack holds the backbone's params and batch_stats.
    model = train.create_model(_tiny(3).model)
    target = train.backbone_variables(train.init_variables(model, jax.random.key(0), 16))
    with open(os.path.join(workdir, "backbone.msgpack"), "rb") as f:
        restored = flax.serialization.from_bytes(target, f.read())
    assert jax.tree.structure(restored) == jax.tree.structure(target)
    # export.load_backbone rebuilds the module from config.json: the same features.
    backbone, variables = export.load_backbone(workdir)
    x = np.random.default_rng(0).normal(size=(4, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(backbone.apply(variables, x, train=False),
                               model.backbone.apply(restored, x, train=False), rtol=1e-6)
    code = ("import sys; sys.modules['bt_jax'] = None; import flax.serialization\n"
            f"v = flax.serialization.msgpack_restore(open({workdir + '/backbone.msgpack'!r}, "
            "'rb').read())\nprint(sorted(v))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)   # the file needs nothing of bt_jax to read
    assert r.returncode == 0 and r.stdout.strip() == "['batch_stats', 'params']", r.stderr
    # A longer run in the same workdir resumes from the last checkpoint.
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "3"]
    longer = _tiny(5)
    longer.eval.enabled = False   # evaluation was checked above
    train.train_and_evaluate(longer, workdir)
    out = capsys.readouterr().out
    assert "Resumed from step 3 of 5." in out
    steps = [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert steps == [2, 3, 4, 5]


def _file_digests(directory) -> dict:
    import hashlib
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, directory)] = hashlib.sha256(
                open(path, "rb").read()).hexdigest()
    return out


@pytest.mark.slow    # 30 s to 100 s on 2 cores; `make test-slow` (and CI) runs it
def test_evaluate_cli_updates_results_and_never_changes_the_checkpoint(tmp_path):
    workdir = str(tmp_path / "run")
    c = _tiny(2)
    c.eval.enabled = False           # pretrain only; the CLI evaluates afterwards
    c.eval.linear_sgd.epochs = 2
    c.eval.finetune.fractions = (0.1,)
    c.eval.finetune.epochs = 2
    c.eval.tsne_points = 120
    c.eval.baselines = False
    train.train_and_evaluate(c, workdir)
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump({"note": "kept"}, f)
    before = _file_digests(os.path.join(workdir, "checkpoints"))
    r = subprocess.run([sys.executable, "-m", "bt_jax.evaluate", "--workdir", workdir],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    # a finished run: its final export, with the online probe of the checkpoint of its step
    assert "Evaluating backbone.msgpack (step 2)" in r.stdout and "semi_10pct_top1" in r.stdout
    assert _file_digests(os.path.join(workdir, "checkpoints")) == before
    saved = json.load(open(os.path.join(workdir, "results.json")))
    assert "note" not in saved and saved["weights"]["step"] == 2   # replaced: one evaluation
    for key in ("linear_top1", "linear_fast_top1", "linear_sgd_top1", "knn_top1",
                "online_linear_top1", "semi_10pct_top1"):
        assert 0.0 <= saved[key] <= 1.0, key
    assert saved["semi_10pct_examples"] == 140   # 14 per class of digits' 10
    assert os.path.exists(os.path.join(workdir, "tsne.png"))
    # Without checkpoints it reads the exported backbone.
    import shutil
    shutil.rmtree(os.path.join(workdir, "checkpoints"))
    r = subprocess.run([sys.executable, "-m", "bt_jax.evaluate", "--workdir", workdir,
                        "--config", "configs/digits.py", "--config.data.image_size=16",
                        "--config.model.width=0.0625", "--config.model.projector_dims=(32,32)",
                        "--config.eval.linear_sgd.epochs=0", "--config.eval.linear_protocol=linear_fast",
                        "--config.eval.finetune.fractions=()", "--config.eval.tsne_points=0",
                        "--config.eval.baselines=False"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Evaluating backbone.msgpack" in r.stdout
    r = subprocess.run([sys.executable, "-m", "bt_jax.evaluate", "--workdir",
                        str(tmp_path / "nothing")], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and "config.json" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow    # a whole training run: over a minute on this 2-core CPU; `make test-slow` (and CI) runs it
def test_train_and_evaluate_with_on_device_augmentation(tmp_path, monkeypatch):
    from bt_jax.data import augment, device_augment
    from bt_jax.train import programs
    c = _tiny(2)
    c.data.augment_on = "device"
    c.eval.baselines = False

    def host_augmentation(*args, **kwargs):
        raise AssertionError("augment_on='device' augmented on the host")

    for name in ("augment_pair", "augment_pair_encoded", "crop_pair_encoded"):
        monkeypatch.setattr(augment, name, host_augmentation)
    seen = []     # (the keys of the batch the device transform received, its views' shapes)
    make_view_fn = device_augment.make_view_fn

    def recording_make_view_fn(*args):
        views = make_view_fn(*args)

        def recorded(batch):
            out = views(batch)
            seen.append((sorted(batch), {k: tuple(v.shape) for k, v in out.items()}))
            return out
        return recorded

    monkeypatch.setattr(programs.device_augment, "make_view_fn", recording_make_view_fn)
    results = train.train_and_evaluate(c, str(tmp_path / "dev"))
    # The step received uint8 images and made both views on the device (traced once).
    s, b = c.data.image_size, c.batch_size // jax.device_count()
    assert seen and seen[0][0] == ["epoch", "image", "index", "label"]
    assert seen[0][1] == {"view_a": (b, s, s, 3), "view_b": (b, s, s, 3)}
    assert 0.3 <= results["linear_top1"] <= 1.0 and "baselines" not in results
    rows = [json.loads(line) for line in open(tmp_path / "dev" / "metrics.jsonl")]
    assert rows[-1]["step"] == 2 and np.isfinite(rows[-1]["loss"])


def _write_folder_dataset(root, n_train=24, n_unlabelled=16):
    """train/ and test/ with two classes of variable-size JPEGs, and a flat unlabelled/."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", 8), ("unlabelled", n_unlabelled)):
        for i in range(n):
            d = root / split if split == "unlabelled" else root / split / "ab"[i % 2]
            os.makedirs(d, exist_ok=True)
            shade = rng.integers(0, 256, 3) // (1 + i % 2)   # class b: darker
            img = np.clip(rng.normal(shade, 30, (30 + i % 7, 36, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{i}.jpg")


@pytest.mark.slow    # a whole training run: over a minute on this 2-core CPU; `make test-slow` (and CI) runs it
@pytest.mark.parametrize("augment_on", ["host", "device"])
def test_train_and_evaluate_streams_a_folder_with_unlabelled_images(tmp_path, augment_on):
    _write_folder_dataset(tmp_path / "data")
    c = _tiny(2)
    c.batch_size = 16
    c.data.name = "folder"
    c.data.path = str(tmp_path / "data")
    c.data.pretrain_split = "train+unlabelled"
    c.data.augment_on = augment_on
    c.eval.baselines = False
    c.eval.knn.k = 5
    results = train.train_and_evaluate(c, str(tmp_path / "run"))
    assert results["num_train"] == 24 and results["num_test"] == 8
    assert 0.0 <= results["linear_top1"] <= 1.0
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert rows[-1]["step"] == 2 and np.isfinite(rows[-1]["loss"])
    if augment_on == "host":
        return
    c.eval.enabled = False   # pretraining only: no results.json
    assert train.train_and_evaluate(c, str(tmp_path / "no_eval")) == {}
    assert not os.path.exists(tmp_path / "no_eval" / "results.json")
    assert os.path.exists(tmp_path / "no_eval" / "backbone.msgpack")


def _cli(*args):
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "bt_jax.main", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_reports_bad_input_in_one_line(tmp_path):
    base = ["--config", "configs/digits.py", "--workdir", str(tmp_path / "x")]
    r = _cli(*base, "--config.model.widht=2")
    assert r.returncode == 2
    assert "unknown config field" in r.stderr and "width" in r.stderr
    assert "Traceback" not in r.stderr
    r = _cli(*base, "--config.data.name=imagenet9")
    assert r.returncode == 2 and "Unknown dataset 'imagenet9'" in r.stderr
    assert "Traceback" not in r.stderr
    r = _cli(*base, "--config.batch_size=0")
    assert r.returncode == 2 and "batch_size" in r.stderr and "Traceback" not in r.stderr


def test_cli_batch_size_must_divide_over_devices(tmp_path):
    env_flags = "--xla_force_host_platform_device_count=4"
    env = dict(os.environ, XLA_FLAGS=env_flags, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "bt_jax.main", "--config", "configs/digits.py",
                        "--workdir", str(tmp_path / "y"), "--config.batch_size=30"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert "not divisible by the 4 devices" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow    # a whole training run: about a minute on this 2-core CPU; `make test-slow` (and CI) runs it
def test_a_diverging_run_stops_clearly_and_saves_no_nan_checkpoint(tmp_path):
    c = _tiny(4)
    c.optim.lr_weights = 1e38          # overflows at once
    c.optim.lr_biases = 1e38
    c.optim.eta = 1.0
    workdir = str(tmp_path / "nan")
    with pytest.raises(FloatingPointError, match="resumes from the last checkpoint"):
        train.train_and_evaluate(c, workdir)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    assert not os.path.exists(ckpt_dir) or not [d for d in os.listdir(ckpt_dir) if d.isdigit()]


@pytest.mark.slow    # 30 s to 100 s on 2 cores; `make test-slow` (and CI) runs it
def test_resuming_with_a_different_model_is_a_clear_error(tmp_path):
    workdir = str(tmp_path / "run")
    c = _tiny(2)
    c.eval.baselines = False
    train.train_and_evaluate(c, workdir)
    c.model.projector_dims = (48, 32)
    with pytest.raises(config_lib.ConfigError,
                       match=r"another model \(model.projector_dims differ.*new --workdir"):
        train.train_and_evaluate(c, workdir)
    # The checkpoint it refused is still there, intact.
    assert "2" in os.listdir(os.path.join(workdir, "checkpoints"))
