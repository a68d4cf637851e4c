"""data.validation_examples (the tuning hold-out) and the kNN monitor."""
import json
import os

import jax
import numpy as np
import pytest

from bt_jax import evaluate, train
from bt_jax.evals import common, monitor, runner
from bt_jax.config import ConfigError
from bt_jax.data import sources, pipeline
from test_main import _tiny


def test_validation_mask_is_class_balanced_disjoint_and_fixed_by_the_seed():
    labels = sources.load_split("digits", "train", image_size=8).labels
    held = sources.validation_mask(labels, 200, seed=3)
    assert held.sum() == 200
    assert all(np.sum(held & (labels == c)) == 20 for c in range(10))
    np.testing.assert_array_equal(held, sources.validation_mask(labels, 200, seed=3))
    assert not np.array_equal(held, sources.validation_mask(labels, 200, seed=4))
    with pytest.raises(ConfigError, match="leaves no training images"):
        sources.validation_mask(labels, len(labels), seed=0)


def _digits_config(validation_examples):
    c = _tiny(2)
    c.data.validation_examples = validation_examples
    return c


def test_pretraining_and_probes_never_see_the_validation_images_nor_the_test_split(monkeypatch):
    c = _digits_config(200)
    full = sources.load_split("digits", "train", image_size=16)
    source = sources.pretrain_split(c.data, seed=c.seed)
    loaded = []
    real_load = sources.load_split
    monkeypatch.setattr(sources, "load_split",
                        lambda name, split, **kw: loaded.append(split) or real_load(name, split, **kw))
    probe_train, probe_eval = sources.labelled_splits(c.data, seed=c.seed)
    assert loaded == ["train"]                    # tuning never reads the test split
    assert len(source) == len(probe_train) == len(full) - 200 and len(probe_eval) == 200
    key = lambda images: {im.tobytes() for im in images}   # noqa: E731
    assert key(source.images) == key(probe_train.images)
    assert not key(probe_eval.images) & key(probe_train.images)
    assert key(probe_eval.images) | key(probe_train.images) == key(full.images)
    monkeypatch.undo()
    train_split, test_split = sources.labelled_splits(_digits_config(0).data, seed=0)
    assert len(train_split) == len(full) and len(test_split) == 359


def test_validation_hold_out_on_a_streamed_source_is_a_clear_error():
    c = _digits_config(100)
    c.data.name = "imagenette"
    with pytest.raises(ConfigError, match="validation_examples.*streamed"):
        sources.pretrain_split(c.data)


def test_monitor_steps():
    assert monitor.monitor_steps(0, 10, 50) == frozenset()
    assert monitor.monitor_steps(1, 10, 35) == {10, 20, 30, 35}
    assert monitor.monitor_steps(0.5, 10, 20) == {5, 10, 15, 20}


def test_monitor_on_a_fixed_encoder_equals_the_end_of_run_knn():
    c = _digits_config(0)
    model = train.create_model(c.model)
    variables = train.backbone_variables(train.init_variables(model, jax.random.key(1), 16))
    train_split, test_split = sources.labelled_splits(c.data, seed=0)
    stats = sources.channel_stats(train_split)
    train_img, test_img = (pipeline.eval_arrays(s, *stats) for s in (train_split, test_split))
    knn = monitor.KnnMonitor(model.backbone, train_img, train_split.labels, test_img,
                             test_split.labels, 10, c.eval.knn, c.eval.batch_size)
    got = knn(variables)
    x_train = common.extract_features(model.backbone, variables, train_img)
    x_test = common.extract_features(model.backbone, variables, test_img)
    want = runner.evaluate_features(x_train, train_split.labels, x_test, test_split.labels,
                                      10, c.eval)
    assert got["knn_top1"] == want["knn_top1"] and got["knn_top5"] == want["knn_top5"]
    np.testing.assert_array_equal(knn.last_features[1], x_test)
    assert got["seconds"] > 0


@pytest.mark.slow    # a whole training run: over a minute on this 2-core CPU; `make test-slow` (and CI) runs it
def test_training_with_the_monitor_logs_it_and_ends_on_the_end_of_run_knn(tmp_path, capsys):
    c = _digits_config(200)
    c.num_steps = 0
    c.num_epochs = 2          # 1,238 images / 64 = 19 steps per epoch
    c.log_every_steps = 10
    c.checkpoint.every_steps = 100
    c.monitor.knn_every_epochs = 1
    c.monitor.diagnostics_every_steps = 0
    workdir = str(tmp_path / "run")
    results = train.train_and_evaluate(c, workdir)
    out = capsys.readouterr().out
    assert "kNN monitor: top-1" in out and "validation split" in out
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    mon = [r for r in rows if "monitor_knn_top1" in r]
    assert [r["step"] for r in mon] == [19, 38] and [r["epoch"] for r in mon] == [1.0, 2.0]
    assert all(r["monitor_seconds"] > 0 for r in mon)
    assert mon[-1]["monitor_knn_top1"] == results["knn_top1"]
    assert results["eval_split"] == "validation" and results["num_test"] == 200
    assert results["num_train"] == 1238
    # The end-of-run evaluation reused the monitor's last features: evaluating the saved
    # backbone from scratch gives the same kNN.
    again = evaluate.evaluate_workdir(workdir, c)
    assert again["knn_top1"] == results["knn_top1"]
    assert again["linear_fast_top1"] == results["linear_fast_top1"]
    assert os.path.exists(os.path.join(workdir, "training_curves.png"))


def test_eval_disabled_turns_off_the_monitor_in_one_line():
    from bt_jax import config as config_lib
    c = _digits_config(0)
    c.eval.enabled = False
    c.monitor.knn_every_epochs = 1
    config_lib.validate(c)     # a recipe with a monitor, run with evaluation off: no error
    assert monitor.knn_monitor_epochs(c.monitor, c.eval) == 0     # the loop's monitor: off
    line = runner.evaluations_off_line(c.monitor, c.eval)
    assert "\n" not in line and line.startswith("eval.enabled=False")
    assert "no kNN monitor" in line and "online probe still trains" in line
    c.monitor.knn_every_epochs, c.monitor.online_probe = 0, False
    assert "monitor" not in runner.evaluations_off_line(c.monitor, c.eval)
    assert runner.evaluations_off_line(c.monitor, c.eval).endswith("no results.json).")
    c.eval.enabled, c.monitor.knn_every_epochs = True, 1
    assert runner.evaluations_off_line(c.monitor, c.eval) == ""
    assert monitor.knn_monitor_epochs(c.monitor, c.eval) == 1
