"""Relaunches never damage a run; every CLI mistake is one line; exports carry their
preprocessing; bad data files are one line or a counted skip."""
import gzip
import json
import os
import struct
import subprocess
import sys
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bt_jax import config as config_lib
from bt_jax.io import export
from bt_jax import train
from bt_jax.data import sources
from bt_jax.models import make_backbone
from stderr import own_lines
from workdirs import digests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))




def _config(num_steps=4):
    c = config_lib.base_config()
    c.batch_size = 64
    c.num_steps = num_steps
    c.data.name = "digits"
    c.data.image_size = 16
    c.model.backbone = "resnet18"
    c.model.stem = "cifar"
    c.model.width = 0.0625
    c.model.projector_dims = (32, 32)
    return c


def _finished_run(workdir, config, steps):
    """The files a finished run leaves (contents are placeholders: nothing reads them here
    but the relaunch logic)."""
    os.makedirs(os.path.join(workdir, "checkpoints", str(steps)))
    with open(os.path.join(workdir, "checkpoints", str(steps), "marker"), "w") as f:
        f.write("checkpoint")
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    weights = {"file": export.BACKBONE_FILE, "step": steps, "digest": "sha256:0"}
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump({"linear_top1": 0.5, "knn_top1": 0.4, "weights": weights}, f)
    with open(os.path.join(workdir, export.BACKBONE_FILE), "wb") as f:
        f.write(b"backbone")
    with open(os.path.join(workdir, export.PREPROCESSING_FILE), "w") as f:
        json.dump({"step": steps}, f)


def test_a_failed_relaunch_changes_no_file_of_a_finished_run(tmp_path):
    workdir = str(tmp_path / "run")
    _finished_run(workdir, _config(), 4)
    before = digests(workdir)
    bad = _config()
    bad.data.name = "fashion_mnist"
    bad.data.path = str(tmp_path / "nowhere")
    with pytest.raises(config_lib.ConfigError, match="IDX files"):
        train.train_and_evaluate(bad, workdir)
    assert digests(workdir) == before
    another_model = _config()
    another_model.model.width = 0.125
    with pytest.raises(config_lib.ConfigError, match="another model"):
        train.train_and_evaluate(another_model, workdir)
    assert digests(workdir) == before


def test_a_relaunch_into_a_finished_run_changes_nothing_and_says_so(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    _finished_run(workdir, _config(), 4)
    before = digests(workdir)
    changed = _config()
    changed.eval.knn.k = 7          # not a model field: the relaunch is allowed, not a resume
    assert train.train_and_evaluate(changed, workdir)["linear_top1"] == 0.5
    assert "holds a finished run (step 4 of 4" in capsys.readouterr().out
    assert digests(workdir) == before


def test_a_failed_first_run_leaves_nothing(tmp_path):
    workdir = str(tmp_path / "new" / "run")
    bad = _config()
    bad.data.name = "fashion_mnist"
    bad.data.path = str(tmp_path / "nowhere")
    with pytest.raises(config_lib.ConfigError, match="IDX files"):
        train.train_and_evaluate(bad, workdir)
    assert not os.path.exists(tmp_path / "new")


def test_write_run_config_names_the_changes_of_a_resumed_run(tmp_path, capsys):
    workdir = str(tmp_path)
    os.makedirs(os.path.join(workdir, "checkpoints", "2"))
    train.write_run_config(workdir, _config(4).to_json_best_effort(indent=2))
    capsys.readouterr()
    train.write_run_config(workdir, _config(8).to_json_best_effort(indent=2))
    assert "Resuming with a changed config" in capsys.readouterr().out
    assert json.load(open(os.path.join(workdir, "config.json")))["num_steps"] == 8
    assert not os.path.exists(os.path.join(workdir, "config.json.tmp"))


def _cli(*args, cwd=ROOT):
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "bt_jax.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _unwritable_dir(tmp_path) -> str:
    """A directory this process cannot create anything in: a read-only one, or (as root,
    whom permissions do not stop) sysfs, where mkdir is refused."""
    if os.geteuid() != 0:
        ro = tmp_path / "read_only"
        ro.mkdir()
        ro.chmod(0o555)
        return str(ro)
    if os.path.isdir("/sys/kernel"):
        return "/sys/kernel"
    pytest.skip("no unwritable directory: running as root without sysfs")


@pytest.mark.parametrize("case", ["missing_config", "workdir_is_a_file", "read_only",
                                  "scalar_tuple", "negative_lr", "zero_width",
                                  "imagenet_stem_1px", "negative_lambda"])
def test_every_cli_mistake_is_one_line_with_exit_status_2(tmp_path, case):
    digits = ["--config", "configs/digits.py"]
    workdir = str(tmp_path / "run")
    args, message = {
        "missing_config": (["--config", "configs/no_such_recipe.py"],
                           r"no_such_recipe.py'?: no such file.*configs/digits.py"),
        "workdir_is_a_file": (digits, r"is a file, not a directory.*another --workdir"),
        "read_only": (digits, r"Cannot write into --workdir .*choose a directory you can"),
        "scalar_tuple": (digits + ["--config.model.projector_dims=512"],
                         r"projector_dims is a tuple.*'\(512,\)'"),
        "negative_lr": (digits + ["--config.optim.lr_weights=-0.2"],
                        r"optim.lr_weights must be >= 0; got -0.2"),
        "zero_width": (digits + ["--config.model.width=0"], r"model.width must be positive"),
        "imagenet_stem_1px": (digits + ["--config.model.stem=imagenet",
                                        "--config.data.image_size=1"],
                              r"data.image_size=1 is too small for model.stem='imagenet'"),
        "negative_lambda": (digits + ["--config.loss.lambd=-1"], r"loss.lambd must be >= 0"),
    }[case]
    if case == "workdir_is_a_file":
        open(workdir, "w").close()
    if case == "read_only":
        workdir = os.path.join(_unwritable_dir(tmp_path), "bt_jax_run")
    r = _cli(*args, "--workdir", workdir, "--config.num_steps=2", "--config.eval.enabled=False")
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    errors = own_lines(r.stderr)
    assert len(errors) == 1 and errors[0].startswith("error: "), r.stderr[-2000:]
    import re
    assert re.search(message, errors[0]), errors[0]
    if case == "workdir_is_a_file":
        assert os.path.getsize(workdir) == 0


def test_the_export_carries_its_preprocessing_and_encodes_uint8_images(tmp_path):
    config = _config()
    backbone = make_backbone("resnet18", stem="cifar", width=0.0625)
    variables = jax.jit(backbone.init)(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    variables = jax.tree.map(np.asarray, {"params": variables["params"],
                                          "batch_stats": variables["batch_stats"]})
    variables["batch_stats"] = jax.tree.map(lambda v: v + 0.3, variables["batch_stats"])
    mean, std = np.array([0.2, 0.3, 0.4], np.float32), np.array([0.5, 0.6, 0.7], np.float32)
    workdir = str(tmp_path)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort())
    export.write_backbone(workdir, variables, config.model, (mean, std),
                          image_size=config.data.image_size, dataset=config.data.name)
    meta = json.load(open(os.path.join(workdir, export.PREPROCESSING_FILE)))
    assert meta["image_size"] == 16 and meta["num_features"] == backbone.num_features
    np.testing.assert_allclose(meta["mean"], mean, rtol=1e-7)
    np.testing.assert_allclose(meta["std"], std, rtol=1e-7)
    assert meta["model"]["stem"] == "cifar" and meta["model"]["width"] == 0.0625
    images = np.random.default_rng(0).integers(0, 256, size=(5, 16, 16, 1), dtype=np.uint8)
    # By hand, in float64: [0, 1], grey to RGB, per-channel standardisation.
    want_x = (np.repeat(images, 3, -1) / 255.0 - mean.astype(np.float64)) / std
    np.testing.assert_allclose(export.load_preprocessing(workdir)(images), want_x, rtol=1e-5,
                               atol=1e-6)
    want = jax.jit(lambda v, x: backbone.apply(v, x, train=False))(
        variables, want_x.astype(np.float32))
    np.testing.assert_allclose(export.load_encoder(workdir)(images), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"pretrained on \[N, 16, 16, 3\].*transpose"):
        export.load_preprocessing(workdir)(np.zeros((2, 3, 16, 16), np.uint8))
    assert not [f for f in os.listdir(workdir) if f.endswith(".tmp")]


def _write_idx(path, array, *, cut=0, magic=(0, 0, 8)):
    data = bytes([*magic, array.ndim]) + b"".join(int(s).to_bytes(4, "big")
                                                  for s in array.shape)
    data += array.astype(np.uint8).tobytes()
    with gzip.open(path, "wb") if path.endswith(".gz") else open(path, "wb") as f:
        f.write(data[:len(data) - cut])


@pytest.mark.parametrize("fault, message", [
    ("truncated", r"truncated or corrupt \(its header says shape \(6, 28, 28\), 4,720 bytes, "
                  r"but it holds 4,620\)"),
    ("bad_magic", r"first bytes are not an IDX magic number"),
    ("int_values", r"value type 0x0c"),
    ("corrupt_gzip", r"truncated or corrupt \((BadGzipFile|EOFError|OSError|error)"),
    ("labels_mismatch", r"do not match: 6 images.*labels of shape \(5,\)"),
])
def test_truncated_or_corrupt_idx_files_are_one_clear_error(tmp_path, fault, message):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    labels = np.arange(6)
    img_path = str(tmp_path / "t10k-images-idx3-ubyte")
    _write_idx(img_path, images, cut=100 if fault == "truncated" else 0,
               magic=(1, 2, 8) if fault == "bad_magic" else
               (0, 0, 0x0C) if fault == "int_values" else (0, 0, 8))
    _write_idx(str(tmp_path / "t10k-labels-idx1-ubyte"),
               labels[:5] if fault == "labels_mismatch" else labels)
    if fault == "corrupt_gzip":
        os.remove(img_path)
        _write_idx(img_path + ".gz", images)
        raw = open(img_path + ".gz", "rb").read()
        open(img_path + ".gz", "wb").write(raw[:len(raw) // 2])
    with pytest.raises(config_lib.ConfigError, match=message):
        sources.load_split("fashion_mnist", "test", image_size=28, path=str(tmp_path))


def _png(width, height, rows) -> bytes:
    """A grayscale 8-bit PNG whose IDAT is the zlib stream of `rows` (bytes)."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0,
                                                               0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def _bomb(size) -> bytes:
    """A real decompression bomb: size x size zeros (1 + size bytes a row), under 1 MB."""
    z = zlib.compressobj(9)
    row = bytes(1 + size)
    body = b"".join(z.compress(row) for _ in range(size)) + z.flush()
    return _png(size, size, body)


def test_a_decompression_bomb_in_a_folder_is_skipped_and_counted_unread(tmp_path, capsys):
    from PIL import Image
    for split in ("train", "test"):
        for cls in ("a", "b"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((12, 12, 3), 40 * i, np.uint8)).save(d / f"{i}.png")
    bomb = _bomb(12_000)            # 144 million pixels in a file of well under 1 MB
    assert len(bomb) < 1_000_000
    (tmp_path / "train" / "a" / "bomb.png").write_bytes(bomb)
    Image.fromarray(np.zeros((9, 7, 3), np.uint8)).save(tmp_path / "train" / "b" / "small.jpg")
    assert sources.folder.image_dimensions(str(tmp_path / "train" / "a" / "bomb.png")) == (12_000,
                                                                                     12_000)
    assert sources.folder.image_dimensions(str(tmp_path / "train" / "b" / "small.jpg")) == (7, 9)
    split = sources.load_split("folder", "train", image_size=8, path=str(tmp_path))
    assert len(split) == 5     # 4 PNGs and the small JPEG; the bomb is never decoded
    out = capsys.readouterr().out
    assert "skipped 1 image file(s) of more than 89,478,485 pixels" in out and "bomb.png" in out
    with pytest.raises(config_lib.ConfigError, match=r"bomb.png' declares 12,000 x 12,000"):
        sources.load_split("folder", "train", image_size=8, path=str(tmp_path), strict=True)
    files = sources.folder.folder_files(str(tmp_path), "train", verify=False)   # streaming too
    assert len(files) == 5 and not any(p.endswith("bomb.png") for p in files.paths)


@pytest.mark.slow   # three representations, each with its SGD probe compiled: about a minute
def test_the_evaluation_reports_each_representation_and_protocol_with_its_time(capsys):
    from bt_jax.evals import runner
    c = _config()
    c.eval.linear_protocol = "linear_fast"
    c.eval.linear_sgd.epochs = 1           # the SGD probe too: a count of epochs
    c.eval.linear_sgd.batch_size = 256
    c.eval.probe_train_examples = 300
    c.eval.finetune.fractions = ()
    c.eval.tsne_points = 0
    c.eval.knn.k = 10
    c.eval.linear_fast.max_iter = 20
    train_split, test_split = sources.labelled_splits(c.data, seed=0)
    model = train.create_model(c.model)
    variables = train.backbone_variables(train.init_variables(model, jax.random.key(0), 16))
    runner.evaluate_all(c.eval, model.backbone, variables, variables, train_split, test_split,
                        seed=c.seed, image_size=c.data.image_size)
    lines = [line for line in capsys.readouterr().out.splitlines()
             if line.startswith("Evaluation | ")]
    assert "trained encoder, random init, raw pixels" in lines[0]
    for rep in ("trained encoder", "random init", "raw pixels"):
        for probe in ("linear probe (fast, L-BFGS", "kNN (k=10)", "linear probe (SGD"):
            done = [line for line in lines if f"| {rep}: {probe}" in line and "top-1" in line]
            assert len(done) == 1, (rep, probe, lines)
            assert done[0].rstrip().endswith(" s)"), done[0]
    assert sum("features of 300 training and 359 test images" in line for line in lines) == 2


def test_ticker_counts_towards_the_total_and_estimates_the_rest():
    from bt_jax import progress
    printed = []
    ticker = progress.Ticker("features", 1000, "images", every_s=0, printer=printed.append)
    for done in (250, 500, 1000):
        ticker.update(done)
    ticker.done("ok")
    assert printed[0].startswith("features: 250/1,000 images (") and "left)" in printed[0]
    assert len(printed) == 3 and printed[-1].startswith("features: ok (1,000 images, ")
    quiet = []
    ticker = progress.Ticker("x", 10, "epochs", every_s=3600, printer=quiet.append)
    ticker.update(5)
    assert quiet == []     # at most one line per every_s
