"""Without TensorFlow: the trainer, the evaluator and the in-memory sources (digits, CIFAR's
python archives) work; what needs TensorFlow says so in one line with the pip extra.

Each run is a subprocess that starts with sys.modules["tensorflow"] = None (and the same
for tensorflow_datasets), so any `import tensorflow` in it raises ImportError.
"""
import json
import os
import pickle
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from bt_jax.data import sources
from bt_jax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK_TF = ("import sys; sys.modules['tensorflow'] = None; "
            "sys.modules['tensorflow_datasets'] = None; ")
TINY = ["--config.batch_size=64", "--config.data.image_size=16", "--config.model.width=0.0625",
        "--config.model.projector_dims=(32,32)", "--config.data.augment_on=device",
        "--config.log_every_steps=2", "--config.checkpoint.every_steps=2",
        "--config.optim.warmup_epochs=0", "--config.eval.linear_sgd.epochs=0",
        "--config.eval.linear_protocol=linear_fast",
        "--config.eval.linear_fast.max_iter=50", "--config.eval.knn.k=20",
        "--config.eval.finetune.fractions=()", "--config.eval.tsne_points=0"]


def _without_tf(code: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-c", BLOCK_TF + code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _module_without_tf(module: str, *args: str) -> subprocess.CompletedProcess:
    code = (f"import runpy; sys.argv = {[module, *args]!r}; "
            f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)")
    return _without_tf(code)


def test_core_modules_import_without_tensorflow():
    r = _without_tf(
        "import bt_jax.losses, bt_jax.models, bt_jax.optim, bt_jax.main, bt_jax.train, "
        "bt_jax.evaluate, bt_jax.data.pipeline, bt_jax.data.sources, bt_jax.event_writer\n"
        "from bt_jax.config import ConfigError\n"
        "try:\n    import bt_jax.data.augment\nexcept ConfigError as e:\n    print(e)\n")
    assert r.returncode == 0, r.stderr
    assert "needs TensorFlow, which is not installed: pip install 'bt_jax[data]'" in r.stdout


def test_host_augmentation_without_tensorflow_stops_in_one_line(tmp_path):
    r = _module_without_tf("bt_jax.main", "--config", "configs/digits.py", "--workdir",
                           str(tmp_path / "run"), "--config.data.augment_on=host")
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert "Host augmentation (data.augment_on=host) needs TensorFlow" in lines[0]
    assert "pip install 'bt_jax[data]'" in lines[0] and "data.augment_on=device" in lines[0]
    assert not os.path.exists(tmp_path / "run" / "checkpoints")   # stopped before training


def test_tfds_source_without_tensorflow_datasets_names_the_extra(tmp_path):
    r = _module_without_tf("bt_jax.main", "--config", "configs/digits.py", "--workdir",
                           str(tmp_path / "run"), "--config.data.name=imagenette")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "needs TensorFlow, which is not installed: pip install 'bt_jax[data]'" in r.stderr


def _write_cifar_archive(root, num_classes: int, *, per_batch: int = 40, tar: bool = False):
    """A small archive in the official layout (Python-2 style byte keys; CIFAR-10: five
    data_batch_i and test_batch; CIFAR-100: train and test), of random images whose
    pixel (0, 0) red / green / blue values are 10 / 20 / 30 and whose label is the image's
    index modulo num_classes. Returns the expected train (images, labels)."""
    rng = np.random.default_rng(0)
    cifar10 = num_classes == 10
    folder = "cifar-10-batches-py" if cifar10 else "cifar-100-python"
    names = ([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if cifar10
             else ["train", "test"])
    key = b"labels" if cifar10 else b"fine_labels"
    os.makedirs(os.path.join(root, folder))
    train_images, train_labels, start = [], [], 0
    for name in names:
        n = per_batch if cifar10 or name == "test" else 5 * per_batch
        images = rng.integers(0, 256, (n, 32, 32, 3), np.uint8)
        images[:, 0, 0] = (10, 20, 30)
        labels = [(start + i) % num_classes for i in range(n)]
        start += n
        data = images.transpose(0, 3, 1, 2).reshape(n, 3072)   # R plane, G plane, B plane
        batch = {b"batch_label": name.encode(), key: labels, b"data": data,
                 b"filenames": [b"x.png"] * n}
        if not cifar10:
            batch[b"coarse_labels"] = [0] * n
        with open(os.path.join(root, folder, name), "wb") as f:
            pickle.dump(batch, f, protocol=2)
        if name != names[-1]:
            train_images.append(images)
            train_labels += labels
    if tar:
        archive = "cifar-10-python.tar.gz" if cifar10 else "cifar-100-python.tar.gz"
        with tarfile.open(os.path.join(root, archive), "w:gz") as t:
            t.add(os.path.join(root, folder), arcname=folder)
        import shutil
        shutil.rmtree(os.path.join(root, folder))
    return np.concatenate(train_images), np.asarray(train_labels, np.int32)


@pytest.mark.parametrize("name,num_classes,tar", [("cifar10", 10, False),
                                                   ("cifar10", 10, True),
                                                   ("cifar100", 100, False)])
def test_cifar_python_archive_loads_exactly(name, num_classes, tar, tmp_path):
    images, labels = _write_cifar_archive(str(tmp_path), num_classes, tar=tar)
    train = sources.load_split(name, "train", image_size=32, path=str(tmp_path))
    test = sources.load_split(name, "test", image_size=32, path=str(tmp_path))
    assert train.num_classes == test.num_classes == num_classes
    np.testing.assert_array_equal(train.images, images)
    np.testing.assert_array_equal(train.labels, labels)
    assert train.images.shape == (200, 32, 32, 3) and test.images.shape == (40, 32, 32, 3)
    assert tuple(train.images[7, 0, 0]) == (10, 20, 30)     # channels in R, G, B order
    if not tar:   # data.path may also be the archive's folder itself
        folder = os.path.join(str(tmp_path), os.listdir(str(tmp_path))[0])
        again = sources.load_split(name, "train", image_size=16, path=folder)
        assert again.images.shape == (200, 16, 16, 3)


def test_cifar_archive_missing_names_both_routes(tmp_path):
    with pytest.raises(ConfigError, match=r"CIFAR-100: no python archive "
                       r"\(cifar-100-python/ or cifar-100-python.tar.gz\).*TFDS"):
        sources.load_split("cifar100", "test", image_size=32, path=str(tmp_path))


def test_resize_matches_tensorflow_bicubic():
    import tensorflow as tf
    from sklearn.datasets import load_digits
    images = np.round(load_digits().images[:300] * (255.0 / 16.0)).astype(np.uint8)[..., None]
    for size in (32, 20, 5):
        ours = sources.base.resize_uint8(images, size).astype(int)   # pylint: disable=protected-access
        theirs = np.clip(np.round(tf.image.resize(tf.convert_to_tensor(images, tf.float32),
                                                  (size, size), method="bicubic",
                                                  antialias=True).numpy()), 0, 255)
        diff = np.abs(ours - theirs)
        assert diff.max() <= 1 and np.mean(diff > 0) < 1e-3, (size, diff.max())


def _check_tensorboard_events(workdir: str) -> None:
    from tensorboard.backend.event_processing import event_accumulator
    acc = event_accumulator.EventAccumulator(workdir, size_guidance={"images": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss")] == [2, 4]
    assert "monitor_knn_top1" in acc.Tags()["scalars"]
    image = acc.Images("cross_correlation")[-1]
    assert image.encoded_image_string.startswith(b"\x89PNG")


@pytest.mark.slow    # two tiny training runs and an evaluation: about 3 minutes on this 2-core CPU; `make test-slow` (and CI) runs it
def test_train_and_evaluate_without_tensorflow(tmp_path):
    workdir = str(tmp_path / "digits")
    r = _module_without_tf("bt_jax.main", "--config", "configs/digits.py", "--workdir",
                           workdir, *TINY, "--config.num_steps=4",
                           "--config.monitor.knn_every_epochs=0.1",
                           "--config.monitor.diagnostics_every_steps=2")
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("config.json", "metrics.jsonl", "results.json", "backbone.msgpack",
                 "training_curves.png", "diagnostics.jsonl", "spectrum.png",
                 "cross_correlation.png"):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert os.listdir(os.path.join(workdir, "checkpoints"))
    results = json.load(open(os.path.join(workdir, "results.json")))
    for r_ in (results, results["baselines"]["random_init"], results["baselines"]["pixels"]):
        assert 0.0 <= r_["linear_top1"] <= 1.0 and 0.0 <= r_["knn_top1"] <= 1.0
    _check_tensorboard_events(workdir)

    r = _module_without_tf("bt_jax.evaluate", "--workdir", workdir)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Evaluating backbone.msgpack (step 4)" in r.stdout
    assert json.load(open(os.path.join(workdir, "results.json")))["evaluated"] == (
        "backbone.msgpack (step 4)")

    data = str(tmp_path / "cifar")
    _write_cifar_archive(data, 10, per_batch=40)
    workdir = str(tmp_path / "cifar10")
    r = _module_without_tf("bt_jax.main", "--config", "configs/cifar10.py", "--workdir",
                           workdir, f"--config.data.path={data}", *TINY,
                           "--config.num_steps=2", "--config.model.projector_dims=(32,32)",
                           "--config.eval.baselines=False")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Training resnet18 on cifar10: 200 images" in r.stdout
    assert 0.0 <= json.load(open(os.path.join(workdir, "results.json")))["knn_top1"] <= 1.0


def test_encode_png_round_trips(tmp_path):
    from PIL import Image
    from bt_jax import event_writer
    rng = np.random.default_rng(0)
    for image in (rng.integers(0, 256, (5, 7, 3), np.uint8), rng.integers(0, 256, (4, 3),
                                                                           np.uint8)):
        path = tmp_path / "x.png"
        path.write_bytes(event_writer.encode_png(image))
        np.testing.assert_array_equal(np.asarray(Image.open(path)), image)
    with pytest.raises(ValueError, match="uint8"):
        event_writer.encode_png(np.zeros((4, 4, 3), np.float32))
