"""The paper's SGD linear probe and semi-supervised fine-tuning on augmented images."""
import jax
import numpy as np
import pytest

from bt_jax import config as config_lib, train
from bt_jax.evals import classifier, common
from bt_jax.data import sources

MEAN, STD = np.full(3, 0.3, np.float32), np.full(3, 0.4, np.float32)


@pytest.fixture(scope="module")
def digits16():
    return (sources.load_split("digits", "train", image_size=16),
            sources.load_split("digits", "test", image_size=16))


def _tiny_backbone():
    c = config_lib.base_config()
    c.model.backbone, c.model.stem, c.model.width = "resnet18", "cifar", 0.0625
    c.model.projector_dims = (32, 32)
    model = train.create_model(c.model)
    variables = train.backbone_variables(train.init_variables(model, jax.random.key(0), 16))
    return model.backbone, jax.device_get(variables)


def test_label_subset_is_deterministic_and_class_balanced():
    labels = np.repeat(np.arange(10), [100, 120, 90, 110, 100, 100, 105, 95, 100, 80])  # 1000
    labels = np.concatenate([labels, np.full(50, -1)])   # unlabelled: never chosen
    a = common.label_subset(labels, 0.1, seed=3)
    np.testing.assert_array_equal(a, common.label_subset(labels, 0.1, seed=3))
    assert not np.array_equal(a, common.label_subset(labels, 0.1, seed=4))
    np.testing.assert_array_equal(np.bincount(labels[a], minlength=10), np.full(10, 10))
    assert len(np.unique(a)) == len(a) and np.all(labels[a] >= 0)
    one = common.label_subset(labels, 0.01, seed=0)
    np.testing.assert_array_equal(np.bincount(labels[one], minlength=10), np.full(10, 1))
    # A class smaller than its share gives all it has.
    small = common.label_subset(np.array([0] * 50 + [1] * 3), 0.2, seed=0)
    np.testing.assert_array_equal(np.bincount(np.array([0] * 50 + [1] * 3)[small]), [5, 3])
    with pytest.raises(ValueError, match="fraction"):
        common.label_subset(labels, 0.0, seed=0)


def test_sgd_probe_learns_from_augmented_pixels_and_not_from_noise(digits16):
    train_split, test_split = digits16
    cfg = classifier.HeadConfig(epochs=8, batch_size=128, lr_head=0.3, crop_scale=(0.3, 1.0))
    r = classifier.train_and_test(classifier.pixel_encoder, {},
                                  (train_split.images, train_split.labels),
                                  (test_split.images, test_split.labels), 10, cfg,
                                  image_size=16, mean=MEAN, std=STD)
    assert r["top1"] > 0.6 and r["top5"] >= r["top1"]
    noise = np.random.default_rng(0).integers(0, 10, len(train_split))
    r = classifier.train_and_test(classifier.pixel_encoder, {}, (train_split.images, noise),
                                  (test_split.images, test_split.labels), 10, cfg,
                                  image_size=16, mean=MEAN, std=STD)
    assert r["top1"] < 0.3


@pytest.mark.slow    # about a minute on this 2-core CPU; `make test-slow` (and CI) runs it
def test_frozen_probe_never_changes_the_backbone_and_finetuning_works_on_a_copy(digits16):
    train_split, test_split = digits16
    backbone, variables = _tiny_backbone()
    before = jax.tree.map(np.array, variables)
    encode = classifier.backbone_encoder(backbone)
    head, after = classifier.train_head(
        encode, variables, train_split.images[:256], train_split.labels[:256], 10,
        classifier.HeadConfig(epochs=2, batch_size=64), image_size=16, mean=MEAN, std=STD)
    assert after is variables and head["w"].shape[1] == 10
    chex_equal = jax.tree.map(np.array_equal, before, jax.tree.map(np.array, variables))
    assert all(jax.tree.leaves(chex_equal)), "the frozen probe changed the backbone"
    head, tuned = classifier.train_head(
        encode, variables, train_split.images[:256], train_split.labels[:256], 10,
        classifier.HeadConfig(epochs=2, batch_size=64, lr_head=0.5, lr_backbone=0.05,
                              weight_decay=0.0, finetune=True), image_size=16, mean=MEAN,
        std=STD)
    unchanged = jax.tree.map(np.array_equal, before, jax.tree.map(np.array, variables))
    assert all(jax.tree.leaves(unchanged)), "fine-tuning changed the caller's variables"
    moved = jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)), before["params"],
                         tuned["params"])
    assert any(jax.tree.leaves(moved)), "fine-tuning did not train the backbone"
    stats_moved = jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)),
                               before["batch_stats"], tuned["batch_stats"])
    assert any(jax.tree.leaves(stats_moved)), "fine-tuning runs BatchNorm in training mode"
