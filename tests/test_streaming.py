"""Streamed sources: TFDS record streams, image-file splits, per-process shares, resume."""
import io
import os

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

import tiny_tfds
from bt_jax import config as config_lib
from bt_jax import parallel
from bt_jax.data import augment, sources, device_augment, pipeline
from bt_jax.data.views import ViewConfig
from batches import config_batches
from bt_jax.data.layout import batch_layout


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    tiny_tfds.build(data_dir)
    return data_dir


def _config(name, path="", *, batch=8, split="", augment_on="host"):
    c = config_lib.base_config()
    c.seed = 3
    c.batch_size = batch
    c.data.name = name
    c.data.path = path
    c.data.pretrain_split = split
    c.data.image_size = 16
    c.data.augment_on = augment_on
    c.data.shuffle_buffer = 16
    c.data.augment.blur_sigma = (0.1, 1.0)
    return c


def _take(stream, n):
    return [next(stream) for _ in range(n)]


def _assert_batches_equal(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert set(g) == set(w)
        for k in w:
            np.testing.assert_array_equal(g[k], w[k], err_msg=k)


# ------------------------------------------------------------------------------ TFDS streams

def test_tfds_processes_read_disjoint_shares_whose_union_is_the_split(tiny_dir):
    split = sources.TFDSSplit(tiny_tfds.NAME, "train+unlabelled", tiny_dir, 3)
    n = tiny_tfds.SIZES["train"] + tiny_tfds.SIZES["unlabelled"]
    assert len(split) == n
    for count in (2, 3):
        seen, encoded = [], {}
        for p in range(count):
            for ex in split.stream(shuffle_seed=7, shuffle_buffer=8, process_index=p,
                                   process_count=count).as_numpy_iterator():
                seen.append(int(ex["index"]))
                encoded[int(ex["index"])] = ex["encoded"]
        assert sorted(seen) == list(range(n)), count   # disjoint, and together the split
        assert len(set(encoded.values())) == n          # each index is one distinct image
    # An example keeps its index in any order (the views are a function of it).
    again = {int(ex["index"]): ex["encoded"] for ex in split.stream(
        shuffle_seed=8, shuffle_buffer=64).as_numpy_iterator()}
    assert again == encoded


def test_tfds_stream_order_is_deterministic_and_differs_between_epochs(tiny_dir):
    split = sources.TFDSSplit(tiny_tfds.NAME, "train", tiny_dir, 3)

    def order(seed):
        return [int(ex["index"]) for ex in split.stream(
            shuffle_seed=seed, shuffle_buffer=16).as_numpy_iterator()]

    assert order(1) == order(1)
    assert order(1) != order(2) and sorted(order(1)) == sorted(order(2))


def test_train_batches_two_processes_split_each_global_batch(tiny_dir):
    c = _config("tfds:" + tiny_tfds.NAME, tiny_dir, split="train+unlabelled")
    source = sources.pretrain_split(c.data)
    assert isinstance(source, sources.TFDSSplit)
    spe = pipeline.steps_per_epoch(source, c.batch_size, 2)
    assert spe == 32 // 4   # each process's share: 32 examples, local batches of 4
    streams = [config_batches(c, source, process_index=p, process_count=2)
               for p in range(2)]
    epoch = [[next(s)["index"] for _ in range(spe)] for s in streams]
    for step in range(spe):
        assert not set(epoch[0][step]) & set(epoch[1][step])
    union = np.concatenate([np.concatenate(e) for e in epoch])
    assert sorted(union.tolist()) == list(range(64))   # the whole split, each example once
    # Every batch carries each example's label (-1 for the unlabelled split), for the
    # online probe: the same labels the records hold.
    want = {int(ex["index"]): int(ex["label"]) for ex in source.stream(
        shuffle_seed=0, shuffle_buffer=0).as_numpy_iterator()}
    batch = next(config_batches(c, source))
    assert [want[i] for i in batch["index"]] == batch["label"].tolist()
    assert sorted(set(want.values())) == [-1, 0, 1, 2]


@pytest.mark.parametrize("augment_on", ["host", "device"])
def test_tfds_stream_resumes_bit_exactly(tiny_dir, augment_on):
    c = _config("tfds:" + tiny_tfds.NAME, tiny_dir, augment_on=augment_on)
    source = sources.pretrain_split(c.data)
    spe = pipeline.steps_per_epoch(source, c.batch_size)   # 40 // 8 = 5
    full = _take(config_batches(c, source), 2 * spe + 2)
    for start in (3, spe, spe + 2):   # mid-epoch, at an epoch boundary, in epoch 2
        resumed = _take(config_batches(c, source, start_step=start), len(full) - start)
        _assert_batches_equal(resumed, full[start:])
    keys = {"host": {"view_a", "view_b", "index", "label"},
            "device": {"crop_a", "crop_b", "index", "epoch", "label"}}[augment_on]
    assert set(full[0]) == keys
    first = full[0]["view_a" if augment_on == "host" else "crop_a"]
    assert first.shape == (8, 16, 16, 3)
    assert first.dtype == (np.float32 if augment_on == "host" else np.uint8)


@pytest.mark.parametrize("name,pretrain,num_classes", [
    ("stl10", "train+unlabelled", 10), ("imagenette", "train", 10),
    ("imagenet2012", "train", 1000)])
def test_streamed_tfds_sources_through_mock_data(name, pretrain, num_classes, tmp_path):
    c = _config(name, str(tmp_path), batch=4)
    with tfds.testing.mock_data(num_examples=9):
        source = sources.pretrain_split(c.data)
        assert isinstance(source, sources.TFDSSplit)
        assert (source.split, source.num_classes, len(source)) == (pretrain, num_classes, 9)
        host = next(config_batches(c, source))
        c.data.augment_on = "device"
        dev = next(config_batches(c, source))
        test = sources.load_split(name, "test", image_size=24, path=str(tmp_path))
    assert host["view_a"].shape == (4, 16, 16, 3) and np.isfinite(host["view_a"]).all()
    assert dev["crop_b"].shape == (4, 16, 16, 3) and dev["crop_b"].dtype == np.uint8
    assert test.images.shape == (9, 24, 24, 3) and test.num_classes == num_classes


def test_tfds_bad_input_gives_clear_errors(tiny_dir, tmp_path):
    c = _config("tfds:" + tiny_tfds.NAME, tiny_dir, split="train+extra")
    with pytest.raises(config_lib.ConfigError, match=r"no split 'extra'; its splits are"):
        sources.pretrain_split(c.data)
    c = _config("tfds:no_such_dataset_xyz", tiny_dir)
    with pytest.raises(config_lib.ConfigError, match="TFDS has no dataset named"):
        sources.pretrain_split(c.data)
    c = _config("imagenette", str(tmp_path / "empty"))
    with pytest.raises(config_lib.ConfigError,
                       match=r"'imagenette' \(split 'train'\) was not found in .*empty.*"
                       r"tfds build imagenette"):
        len(sources.pretrain_split(c.data))
    with pytest.raises(config_lib.ConfigError, match=r"Unknown dataset 'imagenet'"):
        sources.pretrain_split(_config("imagenet").data)


# ---------------------------------------------------------------------------- image folders

def _jpeg(rng, h, w):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _write_image_tree(root, broken=True):
    """train/{a,b}/ (12 JPEGs), test/{a,b}/ (4), unlabelled/ (8 flat, incl. a grayscale
    PNG), and a truncated JPEG in train/a."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 2)):
        for c in ("a", "b"):
            os.makedirs(root / split / c)
            for i in range(n):
                (root / split / c / f"{i}.jpg").write_bytes(_jpeg(rng, 40 + i, 50))
    os.makedirs(root / "unlabelled")
    for i in range(7):
        (root / "unlabelled" / f"u{i}.jpeg").write_bytes(_jpeg(rng, 60, 45 + i))
    Image.fromarray(rng.integers(0, 256, (30, 30), np.uint8)).save(root / "unlabelled" / "g.png")
    if broken:
        (root / "train" / "a" / "cut.jpg").write_bytes(_jpeg(rng, 64, 64)[:300])


def test_folder_streams_labelled_and_unlabelled_files(tmp_path, capsys):
    _write_image_tree(tmp_path)
    c = _config("folder", str(tmp_path), split="train+unlabelled")
    source = sources.pretrain_split(c.data)
    assert isinstance(source, sources.FileSplit)
    assert "skipped 1 unreadable" in capsys.readouterr().out and "cut.jpg" not in "".join(
        source.paths)
    assert len(source) == 12 + 8 and source.num_classes == 2
    assert sorted(source.labels.tolist()) == [-1] * 8 + [0] * 6 + [1] * 6
    flat = sources.pretrain_split(_config("folder", str(tmp_path / "unlabelled"),
                                           split=".").data)
    assert len(flat) == 8 and set(flat.labels.tolist()) == {-1}
    batches = _take(config_batches(c, source), 3)
    assert batches[0]["view_a"].shape == (8, 16, 16, 3)
    for b in batches:   # labels for the online probe, -1 for the unlabelled files
        np.testing.assert_array_equal(b["label"], source.labels[b["index"]])


def test_folder_two_processes_and_resume(tmp_path):
    _write_image_tree(tmp_path, broken=False)
    c = _config("folder", str(tmp_path), batch=4, split="train+unlabelled")
    source = sources.pretrain_split(c.data)
    spe = pipeline.steps_per_epoch(source, c.batch_size)   # 20 // 4
    full = _take(config_batches(c, source), spe + 2)
    _assert_batches_equal(_take(config_batches(c, source, start_step=spe - 1), 3),
                          full[spe - 1:])
    halves = [_take(config_batches(c, source, process_index=p, process_count=2), spe)
              for p in range(2)]
    seen = np.concatenate([b["index"] for h in halves for b in h])
    assert sorted(seen.tolist()) == list(range(20))   # disjoint, and together the split
    for step in range(spe):   # process p holds columns p of the global batch
        np.testing.assert_array_equal(
            np.concatenate([halves[0][step]["index"], halves[1][step]["index"]]),
            full[step]["index"])


def test_folder_bad_files_strict_and_unverified(tmp_path):
    _write_image_tree(tmp_path)
    c = _config("folder", str(tmp_path))
    c.data.strict_decode = True
    with pytest.raises(config_lib.ConfigError, match=r"Cannot decode image .*cut\.jpg"):
        sources.pretrain_split(c.data)
    c.data.strict_decode, c.data.verify_files = False, False
    c.batch_size = 13   # the whole train split: every batch holds the truncated file
    source = sources.pretrain_split(c.data)
    with pytest.raises(config_lib.ConfigError, match=r"Cannot decode .*cut\.jpg.*verify_files"):
        next(config_batches(c, source))
    with pytest.raises(config_lib.ConfigError, match=r"does not exist"):
        sources.pretrain_split(_config("folder", str(tmp_path), split="val").data)
    os.makedirs(tmp_path / "void")
    with pytest.raises(config_lib.ConfigError, match=r"No images .* found in .*void"):
        sources.pretrain_split(_config("folder", str(tmp_path), split="void").data)
    with pytest.raises(config_lib.ConfigError, match="no class sub-directories"):
        sources.folder.load_folder("unlabelled", 16, str(tmp_path))


# ------------------------------------------------------------------- crop-first JPEG decoding

def test_encoded_view_equals_decoded_view_for_jpeg_and_png():
    """Crop-first decoding takes the window `augment_view` takes from the decoded image.

    PNGs match exactly. decode_and_crop_jpeg upsamples chroma differently at crop edges
    that are not aligned to the 16-pixel MCU grid, so a few percent of a JPEG crop's pixels
    differ; the views stay close.
    """
    rng = np.random.default_rng(1)
    cfg = ViewConfig(image_size=24, blur_sigma=(0.1, 1.0), solarize_prob=0.5)
    for fmt in ("JPEG", "PNG"):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (70, 90, 3), np.uint8)).save(buf, fmt)
        encoded = tf.constant(buf.getvalue())
        decoded = augment.decode_rgb(encoded)
        for s in range(8):
            seed = tf.constant([s, 11], tf.int64)
            top, left, h, w = (int(v) for v in augment.crop_window(
                augment._view_seeds(seed)[0], 70, 90, cfg.crop_scale, cfg.crop_ratio))
            crop = augment.decode_crop(encoded, augment._view_seeds(seed)[0], cfg.crop_scale,
                                       cfg.crop_ratio).numpy()
            assert crop.shape == (h, w, 3)
            differs = crop != decoded.numpy()[top:top + h, left:left + w]
            want = augment.augment_view(decoded, seed, cfg).numpy()
            got = augment.augment_view_encoded(encoded, seed, cfg).numpy()
            if fmt == "PNG":
                assert not differs.any()
                np.testing.assert_allclose(got, want, atol=1e-6)
            else:
                assert differs.mean() < 0.06, (s, differs.mean())
                assert np.abs(got - want).mean() < 5e-3, s


def test_host_crops_plus_device_photometric_match_device_views_without_ops():
    """With every photometric probability 0 the device path returns the host crops."""
    cfg = ViewConfig(image_size=16, flip_prob=0.0, jitter_prob=0.0, grayscale_prob=0.0,
                     blur_prob=0.0)
    rng = np.random.default_rng(2)
    crops = rng.integers(0, 256, (2, 4, 16, 16, 3), np.uint8)
    views = device_augment.make_view_fn(0, cfg, cfg, np.zeros(3), np.ones(3))(
        {"crop_a": crops[0], "crop_b": crops[1], "index": np.arange(4), "epoch": np.zeros(4)})
    np.testing.assert_allclose(views["view_a"], crops[0] / 255.0, atol=1e-6)
    np.testing.assert_allclose(views["view_b"], crops[1] / 255.0, atol=1e-6)
    flip = ViewConfig(image_size=16, flip_prob=1.0, jitter_prob=0.0, grayscale_prob=0.0,
                      blur_prob=0.0, solarize_prob=1.0)
    a, _ = device_augment.augment_cropped_batch(crops[0], crops[1], jax.random.split(
        jax.random.key(0), 4), flip, cfg)
    x = crops[0][:, :, ::-1] / 255.0
    np.testing.assert_allclose(a, np.where(x >= 0.5, 1 - x, x), atol=1e-6)


# ------------------------------------------------------------------------- device prefetch

def test_prefetch_to_mesh_yields_every_batch_in_order_as_global_arrays():
    mesh = parallel.make_mesh()
    host = [{"x": np.full((16, 3), i, np.float32)} for i in range(5)]
    out = list(parallel.prefetch_to_mesh(iter(host), mesh, size=2))
    assert len(out) == 5
    for i, batch in enumerate(out):
        assert isinstance(batch["x"], jax.Array) and batch["x"].sharding.spec[0] == "batch"
        np.testing.assert_array_equal(np.asarray(batch["x"]), host[i]["x"])


@pytest.mark.parametrize("augment_on", ["host", "device"])
def test_every_split_kind_yields_the_batch_layout_views_names(tmp_path, tiny_dir, augment_on):
    """bt_jax.data.layout is the one statement of the pipeline's batch layout: in memory,
    files and TFDS, augmented on the host or the device."""
    _write_image_tree(tmp_path, broken=False)
    configs = [_config("digits", augment_on=augment_on),
               _config("folder", str(tmp_path), augment_on=augment_on),
               _config("tfds:" + tiny_tfds.NAME, tiny_dir, augment_on=augment_on)]
    for c in configs:
        source = sources.pretrain_split(c.data)
        batch = next(config_batches(c, source))
        layout = batch_layout(augment_on, source.gather_on_host)
        assert set(batch) == set(layout.keys), c.data.name
        assert all(v.shape[0] == c.batch_size for v in batch.values())
