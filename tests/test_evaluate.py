"""kNN and linear probe against NumPy references and known-answer data."""
import ml_collections
import numpy as np
import pytest

from bt_jax import evaluate


def numpy_weighted_knn(train_x, train_y, test_x, k, temperature, num_classes):
    tr = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    te = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
    preds = []
    for q in te.astype(np.float64) @ tr.T.astype(np.float64):
        idx = np.argsort(-q)[:k]
        votes = np.zeros(num_classes)
        np.add.at(votes, train_y[idx], np.exp(q[idx] / temperature))
        preds.append(np.argmax(votes))
    return np.array(preds)


@pytest.mark.parametrize("k,temperature", [(1, 0.1), (15, 0.1), (50, 0.5)])
def test_knn_matches_numpy_reference(k, temperature):
    rng = np.random.default_rng(k)
    centres = rng.normal(size=(4, 16))
    train_y = rng.integers(0, 4, 200)
    test_y = rng.integers(0, 4, 60)
    train_x = centres[train_y] + 1.5 * rng.normal(size=(200, 16))
    test_x = centres[test_y] + 1.5 * rng.normal(size=(60, 16))
    want = np.mean(numpy_weighted_knn(train_x, train_y, test_x, k, temperature, 4) == test_y)
    got = evaluate.knn_top1(train_x, train_y, test_x, test_y, 4, k=k, temperature=temperature,
                            chunk=25)
    assert got == pytest.approx(want)
    assert 0.3 < got <= 1.0


def test_linear_probe_separates_separable_data_and_not_noise():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(20, 3))
    x = rng.normal(size=(600, 20))
    y = np.argmax(x @ w, axis=1)
    acc = evaluate.linear_probe_top1(x[:500], y[:500], x[500:], y[500:], 3, epochs=30,
                                     batch_size=100, lr=0.5)
    assert acc > 0.9
    noise = rng.integers(0, 3, 600)
    chance = evaluate.linear_probe_top1(x[:500], noise[:500], x[500:], noise[500:], 3, epochs=30,
                                        batch_size=100, lr=0.5)
    assert chance < 0.55


def test_results_table_and_file(tmp_path):
    results = {"linear_top1": 0.9512, "knn_top1": 0.9, "baselines": {
        "random_init": {"linear_top1": 0.5, "knn_top1": 0.4},
        "pixels": {"linear_top1": 0.93, "knn_top1": 0.95}}}
    table = evaluate.format_table(results)
    assert "Barlow Twins" in table and "95.1%" in table and "random init" in table
    assert len(table.splitlines()) == 4
    path = evaluate.write_results(results, str(tmp_path))
    import json
    assert json.load(open(path))["baselines"]["pixels"]["knn_top1"] == 0.95


def test_evaluate_features_uses_the_eval_config():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 8))
    y = (x[:, 0] > 0).astype(np.int32)
    cfg = ml_collections.ConfigDict(dict(linear_epochs=20, linear_batch_size=32, linear_lr=0.3,
                                         linear_weight_decay=0.0, knn_k=5,
                                         knn_temperature=0.1))
    r = evaluate.evaluate_features(x[:100], y[:100], x[100:], y[100:], 2, cfg)
    assert set(r) == {"linear_top1", "knn_top1"}
    assert r["linear_top1"] > 0.85
