"""Data sources, the paired-view augmentations and the train iterator."""
import gzip
import os

import numpy as np
import pytest
import tensorflow as tf

from bt_jax import config as config_lib
from bt_jax.data import augment, sources, pipeline
from numpy_reference import gaussian_blur, torchvision_mean_crop_area
from batches import config_batches
from stderr import cuda_plugin_installed, own_lines


@pytest.fixture(scope="module")
def digits():
    return sources.load_split("digits", "train", image_size=16)


def test_digits_splits_are_disjoint_stratified_and_upsampled():
    train = sources.load_split("digits", "train", image_size=32)
    test = sources.load_split("digits", "test", image_size=32)
    assert len(train) + len(test) == 1797
    assert train.images.shape[1:] == (32, 32, 1) and train.images.dtype == np.uint8
    assert abs(len(test) / 1797 - 0.2) < 0.01
    assert set(np.unique(test.labels)) == set(range(10))
    assert train.images.max() > 200  # 0..16 scaled to 0..255
    # No test image appears in train (compare exact bytes).
    train_keys = {img.tobytes() for img in train.images}
    assert sum(img.tobytes() in train_keys for img in test.images) < 5  # duplicates in the data


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(s).to_bytes(4, "big")
                                                     for s in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 4, 9], np.uint8)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    split = sources.load_split("fashion_mnist", "test", image_size=28, path=str(tmp_path))
    np.testing.assert_array_equal(split.images[..., 0], images)
    np.testing.assert_array_equal(split.labels, labels)
    with pytest.raises(config_lib.ConfigError, match=r"train-images-idx3-ubyte.* not in .*"
                       r"tfds build fashion_mnist.*apt-get install -y dataset-fashion-mnist"):
        sources.load_split("fashion_mnist", "train", image_size=28, path=str(tmp_path))


def test_fashion_mnist_falls_back_to_tfds_without_idx_files(tmp_path):
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=5):
        split = sources.load_split("fashion_mnist", "train", image_size=32, path=str(tmp_path))
    assert split.images.shape == (5, 32, 32, 1) and split.images.dtype == np.uint8
    assert split.num_classes == 10 and split.labels.max() < 10


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(config_lib.ConfigError, match=r"Unknown dataset 'mnist2'.*digits"):
        sources.load_split("mnist2", "train", image_size=32)


def _image(seed=0, size=24):
    return tf.constant(np.random.default_rng(seed).integers(0, 256, (size, size, 3), np.uint8))


def test_views_are_pure_functions_of_seed_epoch_and_index():
    cfg = augment.ViewConfig(16)
    img = _image()
    v1 = augment.augment_view(img, augment.view_seed(0, 3, 7), cfg).numpy()
    v2 = augment.augment_view(img, augment.view_seed(0, 3, 7), cfg).numpy()
    np.testing.assert_array_equal(v1, v2)
    for other in (augment.view_seed(1, 3, 7), augment.view_seed(0, 4, 7),
                  augment.view_seed(0, 3, 8)):
        assert not np.allclose(augment.augment_view(img, other, cfg).numpy(), v1)
    assert v1.shape == (16, 16, 3) and v1.dtype == np.float32
    assert v1.min() >= 0.0 and v1.max() <= 1.0


def test_crop_windows_follow_torchvision_ranges():
    areas, ratios = [], []
    for i in range(300):
        top, left, h, w = (int(v) for v in augment.crop_window(
            tf.constant([i, 0], tf.int64), 100, 100, (0.08, 1.0), (3 / 4, 4 / 3)))
        assert 0 <= top <= 100 - h and 0 <= left <= 100 - w
        areas.append(h * w / 1e4)
        ratios.append(w / h)
    assert 0.07 <= min(areas) and max(areas) <= 1.0
    assert np.mean(areas) == pytest.approx(torchvision_mean_crop_area(), abs=0.04)
    assert min(ratios) > 0.7 and max(ratios) < 1.4
    # Impossible ratio (image far wider than 4:3 at full scale) -> centred fallback crop.
    top, left, h, w = (int(v) for v in augment.crop_window(
        tf.constant([1, 2], tf.int64), 10, 100, (1.0, 1.0), (3 / 4, 4 / 3)))
    assert (h, w) == (10, 13) and left == (100 - 13) // 2 and top == 0


def test_grayscale_solarize_and_flip_match_numpy():
    x = np.random.default_rng(1).uniform(size=(5, 6, 3)).astype(np.float32)
    gray = augment.to_grayscale(tf.constant(x)).numpy()
    np.testing.assert_allclose(gray[..., 1], x @ np.array([0.299, 0.587, 0.114]), rtol=1e-5)
    np.testing.assert_allclose(augment.solarize(tf.constant(x)).numpy(),
                               np.where(x >= 0.5, 1 - x, x))


def test_gaussian_blur_matches_float64_reference():
    x = np.random.default_rng(2).uniform(size=(12, 10, 3))
    sigma, ksize = 1.3, 9
    got = augment.gaussian_blur(tf.constant(x, tf.float32), sigma, ksize).numpy()
    want = gaussian_blur(x, sigma, ksize)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_probabilities_switch_ops_on_and_off():
    img = _image(3)
    seed = augment.view_seed(0, 0, 0)
    plain = augment.ViewConfig(24, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0,
                               jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0)
    identity = augment.augment_view(img, seed, plain).numpy()
    np.testing.assert_allclose(identity, img.numpy() / 255.0, atol=1e-5)
    for field, check in [
        ("flip_prob", lambda v: np.allclose(v, identity[:, ::-1])),
        ("grayscale_prob", lambda v: np.allclose(v[..., 0], v[..., 2])),
        ("solarize_prob", lambda v: np.allclose(v, np.where(identity >= 0.5, 1 - identity,
                                                            identity))),
        ("blur_prob", lambda v: v.std() < identity.std()),
        ("jitter_prob", lambda v: not np.allclose(v, identity, atol=1e-3)),
    ]:
        cfg = augment.ViewConfig(**{**plain.__dict__, field: 1.0})
        assert check(augment.augment_view(img, seed, cfg).numpy()), field


def test_solarize_probability_is_respected_statistically():
    cfg = augment.ViewConfig(8, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0,
                             jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0,
                             solarize_prob=0.2)
    img = tf.fill([8, 8, 3], tf.constant(230, tf.uint8))   # bright: solarised -> dark
    dark = [augment.augment_view(img, augment.view_seed(0, 0, i), cfg).numpy().mean() < 0.5
            for i in range(400)]
    assert np.mean(dark) == pytest.approx(0.2, abs=0.06)


def test_bad_augmentation_settings_are_clear_errors():
    with pytest.raises(config_lib.ConfigError, match="flip_prob"):
        augment.ViewConfig(32, flip_prob=1.5)
    with pytest.raises(config_lib.ConfigError, match="crop_scale"):
        augment.ViewConfig(32, crop_scale=(0.5, 0.2))
    with pytest.raises(config_lib.ConfigError, match="too small for a blur"):
        augment.ViewConfig(4, blur_sigma=(0.1, 2.0))


def _config(batch_size=32):
    c = config_lib.base_config()
    c.seed = 3
    c.batch_size = batch_size
    c.data.image_size = 16
    c.data.augment.blur_sigma = (0.1, 1.0)
    return c


def test_train_batches_resume_exactly_and_split_over_processes(digits):
    c = _config()
    spe = len(digits) // 32
    stream = config_batches(c, digits)
    first = [next(stream) for _ in range(spe + 2)]     # crosses an epoch boundary
    b = first[0]
    assert b["view_a"].shape == (32, 16, 16, 3) and b["view_a"].dtype == np.float32
    assert not np.allclose(b["view_a"], b["view_b"])
    resumed = next(config_batches(c, digits, start_step=spe + 1))
    np.testing.assert_array_equal(resumed["view_a"], first[spe + 1]["view_a"])
    np.testing.assert_array_equal(resumed["index"], first[spe + 1]["index"])
    # Each epoch visits distinct examples, in a new order.
    epoch0 = np.concatenate([x["index"] for x in first[:spe]])
    assert len(set(epoch0)) == spe * 32
    assert not np.array_equal(first[0]["index"], first[spe]["index"])
    # Two processes each get half of every global batch.
    halves = [next(config_batches(c, digits, process_index=p, process_count=2))
              for p in (0, 1)]
    np.testing.assert_array_equal(np.concatenate([h["view_b"] for h in halves]), b["view_b"])


def test_pipeline_config_errors(digits):
    c = _config(batch_size=len(digits) + 1)
    with pytest.raises(config_lib.ConfigError, match="larger than"):
        next(config_batches(c, digits))
    c = _config()
    c.data.augment_on = "gpu"
    with pytest.raises(config_lib.ConfigError, match="augment_on"):
        next(config_batches(c, digits))


def test_device_mode_yields_raw_images_with_their_epoch_and_index(digits):
    c = _config()
    c.data.augment_on = "device"
    spe = len(digits) // 32
    stream = config_batches(c, digits, start_step=spe - 1)
    last, nxt = next(stream), next(stream)
    assert set(last) == {"image", "index", "epoch", "label"}
    assert last["image"].dtype == np.uint8 and last["image"].shape == (32, 16, 16, 1)
    np.testing.assert_array_equal(last["image"], digits.images[last["index"]])
    np.testing.assert_array_equal(last["label"], digits.labels[last["index"]])
    assert set(last["epoch"]) == {0} and set(nxt["epoch"]) == {1}
    host = next(config_batches(_config(), digits, start_step=spe - 1))
    np.testing.assert_array_equal(host["index"], last["index"])  # same order either way


def test_device_mode_batches_resume_and_split_over_processes_without_tensorflow(digits):
    """In-memory splits augmented on the device are gathered in NumPy: a resumed stream
    and each process's half equal the uninterrupted one-process stream, across an epoch
    boundary, and each epoch visits distinct examples."""
    from bt_jax.data import in_memory
    c = _config()
    c.data.augment_on = "device"
    spe = len(digits) // 32
    full = [next(s) for s in [config_batches(c, digits)] for _ in range(spe + 2)]
    assert len(set(np.concatenate([b["index"] for b in full[:spe]]))) == spe * 32
    resumed = config_batches(c, digits, start_step=spe - 1)
    for want in full[spe - 1:]:
        got = next(resumed)
        for key in ("image", "index", "label", "epoch"):
            np.testing.assert_array_equal(got[key], want[key])
    halves = [in_memory.device_batches(digits.images, digits.labels, seed=c.seed,
                                       global_batch=32, start_step=spe, process_index=p,
                                       process_count=2) for p in (0, 1)]
    first = [next(h) for h in halves]
    assert first[0]["image"].shape == (16, 16, 16, 1)
    np.testing.assert_array_equal(np.concatenate([h["index"] for h in first]),
                                  full[spe]["index"])
    with pytest.raises(config_lib.ConfigError, match="not divisible"):
        next(in_memory.device_batches(digits.images, digits.labels, seed=0, global_batch=32,
                                      process_count=3))


@pytest.mark.parametrize("name,num_classes", [("cifar10", 10), ("cifar100", 100)])
def test_tfds_sources_through_mock_data(name, num_classes, tmp_path):
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=12):
        split = sources.load_split(name, "train", image_size=32, path=str(tmp_path))
        small = sources.load_split(name, "test", image_size=16, path=str(tmp_path))
    assert split.images.shape == (12, 32, 32, 3) and split.images.dtype == np.uint8
    assert split.num_classes == num_classes
    assert split.labels.dtype == np.int32 and split.labels.max() < num_classes
    assert small.images.shape == (12, 16, 16, 3)


def test_tfds_source_missing_offline_is_a_clear_error(tmp_path):
    with pytest.raises(config_lib.ConfigError, match=r"'cifar10' \(split 'train'\) was not found "
                       r"in .*none: it has not been prepared.*tfds build cifar10"):
        sources.load_split("cifar10", "train", image_size=32, path=str(tmp_path / "none"))


def _write_folder(root):
    """train/ and test/ with classes 'cat' and 'dog' in every PNG/JPEG flavour, plus junk."""
    from PIL import Image
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 30, 3), np.uint8)
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            os.makedirs(root / split / c)
        Image.fromarray(rgb).save(root / split / "cat" / "rgb.png")
        Image.fromarray(rgb).save(root / split / "cat" / "photo.JPG", quality=95)
        Image.fromarray(rgb[..., 0]).save(root / split / "dog" / "gray.png")
        Image.fromarray(np.dstack([rgb, np.full((40, 30), 128, np.uint8)])).save(
            root / split / "dog" / "rgba.png")
    Image.fromarray(rgb).convert("P").save(root / "train" / "dog" / "palette.png")
    Image.fromarray((rgb[..., 1].astype(np.uint16) * 257)).save(root / "train" / "cat" / "deep.png")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    (root / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return rgb


def test_folder_source_reads_every_format_and_skips_corrupt_files(tmp_path, capsys):
    rgb = _write_folder(tmp_path)
    train = sources.load_split("folder", "train", image_size=20, path=str(tmp_path))
    assert "skipped 1 unreadable" in capsys.readouterr().out
    assert train.images.shape == (6, 20, 20, 3) and train.num_classes == 2
    assert sorted(train.labels.tolist()) == [0, 0, 0, 1, 1, 1]   # cat: 3 files, dog: 3 + broken
    test = sources.load_split("folder", "test", image_size=30, path=str(tmp_path))
    assert test.images.shape == (4, 30, 30, 3)
    # The RGB PNG at its own size (30 wide) keeps its centre 30x30 square exactly.
    np.testing.assert_array_equal(test.images[test.labels == 0][1], rgb[5:35])
    gray = test.images[test.labels == 1][0]           # grayscale -> 3 equal channels
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
    deep = train.images[train.labels == 0][0]          # 16-bit PNG scaled to 8 bits
    from PIL import Image
    Image.fromarray(rgb[..., 1]).save(tmp_path / "eight_bit.png")
    want = sources.folder.decode_image_file(str(tmp_path / "eight_bit.png"), 20)
    assert np.max(np.abs(deep.astype(int) - want.astype(int))) <= 1


def test_folder_bad_input_gives_clear_errors(tmp_path):
    _write_folder(tmp_path)
    with pytest.raises(config_lib.ConfigError, match=r"Cannot decode image .*broken\.png"):
        sources.load_split("folder", "train", image_size=16, path=str(tmp_path), strict=True)
    with pytest.raises(config_lib.ConfigError, match="does not exist"):
        sources.load_split("folder", "train", image_size=16, path=str(tmp_path / "nope"))
    with pytest.raises(config_lib.ConfigError, match="needs data.path"):
        sources.load_split("folder", "train", image_size=16)
    empty = tmp_path / "empty"
    os.makedirs(empty / "train" / "a")
    with pytest.raises(config_lib.ConfigError, match="No images"):
        sources.load_split("folder", "train", image_size=16, path=str(empty))
    os.makedirs(tmp_path / "test" / "bird")
    with pytest.raises(config_lib.ConfigError, match=r"classes that .* lacks: \['bird'\]"):
        sources.load_split("folder", "test", image_size=16, path=str(tmp_path))


def test_channel_stats_match_numpy_in_chunks(digits):
    mean, std = sources.channel_stats(digits, chunk=100)
    x = digits.images.astype(np.float64) / 255.0
    np.testing.assert_allclose(mean, np.repeat(x.mean(), 3), rtol=1e-6)
    np.testing.assert_allclose(std, np.repeat(x.std(), 3), rtol=1e-5)


def test_tensorflow_start_up_notices_are_dropped_and_other_stderr_kept(capfd):
    from bt_jax import data
    notices = ("WARNING: All log messages before absl::InitializeLog() is called are written "
               "to STDERR\nI0000 00:00:1.0 1 port.cc:153] oneDNN custom operations are on. "
               "You may see slightly different numerical results.\n")
    assert data.without_startup_notices(notices + "E real problem\n") == "E real problem\n"
    with data.quiet_tensorflow_start():
        os.write(2, notices.encode() + b"native error\n")
        os.write(1, b"stdout untouched\n")
    out, err = capfd.readouterr()
    assert err == "native error\n" and out == "stdout untouched\n"
    with pytest.raises(ImportError):    # a failing import still shows what it printed
        with data.quiet_tensorflow_start():
            os.write(2, b"why it failed\n")
            raise ImportError("x")
    assert capfd.readouterr().err == "why it failed\n"


@pytest.mark.parametrize("code", [
    "from bt_jax.data import import_tensorflow as t; t().constant(1.0).numpy()",
    # tensorboard's event writer loads TensorFlow itself where it is installed
    "import sys; from bt_jax import event_writer as e; w = e.create(sys.argv[1]); "
    "w.write_scalars(1, {'x': 1.0}); w.close()"], ids=["import_tensorflow", "event_writer"])
def test_loading_tensorflow_prints_nothing(code, tmp_path):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                       text=True, check=True,
                       env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"})
    # JAX's CUDA plugin, where `bt_jax[gpu-plan]` installed it, logs its own start-up lines
    assert (own_lines(r.stderr) if cuda_plugin_installed() else r.stderr) in ([], ""), r.stderr
