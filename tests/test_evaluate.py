"""kNN and linear probe against NumPy references and known-answer data."""
import ml_collections
import numpy as np
import pytest

from bt_jax.evals import common, knn, linear_fast, runner


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
    # Bank chunks of 37 rows (the last one padded) and query chunks of 25: the running
    # top-k over chunks must give the answer of the whole bank at once.
    got = knn.knn_top1(train_x, train_y, test_x, test_y, 4, k=k, temperature=temperature,
                            bank_chunk=37, query_chunk=25)
    assert got == pytest.approx(want)
    assert 0.3 < got <= 1.0


def test_knn_on_a_hand_made_bank_gives_the_known_answer():
    # Bank: three class-0 points near +x, two class-1 points at +y, one class-2 point at -x.
    bank = np.array([[1, 0.1], [1, -0.1], [1, 0.2], [0, 1], [0.1, 1], [-1, 0]], np.float32)
    labels = np.array([0, 0, 0, 1, 1, 2])
    queries = np.array([[1, 0], [0, 1], [-1, 0.05], [0.8, 1.05]], np.float32)
    # k=1: the nearest point's class. k=3, T=0.1: query (0.8, 1.05) is at 52.7 degrees,
    # so its 3 nearest are (0.1, 1) at 84.3, (0, 1) at 90 and (1, 0.2) at 11.3 degrees;
    # class 1 wins the vote.
    np.testing.assert_array_equal(
        np.argmax(knn.knn_scores(bank, labels, queries, 3, k=1, bank_chunk=4), 1),
        [0, 1, 2, 1])
    scores = knn.knn_scores(bank, labels, queries, 3, k=3, temperature=0.1, bank_chunk=4)
    np.testing.assert_array_equal(np.argmax(scores, 1), [0, 1, 2, 1])
    # Query (-1, 0.05): neighbours (-1, 0) (sim ~1), (0, 1) and (0.1, 1) (sims ~0.05 and
    # ~-0.05); votes exp(s / 0.1) per class, computed by hand.
    q = queries[2] / np.linalg.norm(queries[2])
    b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    s = b @ q
    np.testing.assert_allclose(scores[2], [0.0, np.exp(s[3] / 0.1) + np.exp(s[4] / 0.1),
                                           np.exp(s[5] / 0.1)], rtol=1e-5)
    acc = knn.knn_accuracy(bank, labels, queries, [0, 1, 2, 0], 3, k=1, bank_chunk=4)
    assert acc == {"top1": 0.75, "top5": 1.0}


def test_topk_accuracy():
    scores = np.array([[0.1, 0.5, 0.4], [0.9, 0.04, 0.06], [0.2, 0.3, 0.5]])
    assert common.topk_accuracy(scores, [1, 1, 0], 1) == pytest.approx(1 / 3)
    assert common.topk_accuracy(scores, [1, 1, 0], 2) == pytest.approx(1 / 3)
    assert common.topk_accuracy(scores, [2, 1, 1], 2) == pytest.approx(2 / 3)
    assert common.topk_accuracy(scores, [2, 1, 0], 5) == 1.0   # k capped at 3 classes


def test_fast_probe_reaches_scikit_learns_logistic_regression():
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    x, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(0).permutation(len(y))
    x, y = x[perm].astype(np.float32), y[perm]
    tr, te = slice(0, 1200), slice(1200, None)
    got = linear_fast.fast_linear_probe(x[tr], y[tr], x[te], y[te], 10, max_iter=200)
    xs_tr, xs_te = common.standardize_features(x[tr], x[te])
    want = LogisticRegression(max_iter=5000).fit(xs_tr, y[tr]).score(xs_te, y[te])
    assert got["top1"] >= want - 0.01, (got, want)
    assert got["l2"] in (1e-6, 1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2) and got["top5"] >= got["top1"]


def test_fast_probe_is_at_chance_on_noise_labels():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 20)).astype(np.float32)
    noise = rng.integers(0, 3, 600)
    r = linear_fast.fast_linear_probe(x[:500], noise[:500], x[500:], noise[500:], 3, max_iter=50)
    assert r["top1"] < 0.5


def test_results_table_and_file(tmp_path):
    results = {"linear_top1": 0.9512, "linear_sgd_top1": 0.9512, "linear_fast_top1": 0.94,
               "knn_top1": 0.9, "semi_1pct_top1": 0.5, "online_linear_top1": 0.75, "baselines": {
                   "random_init": {"linear_top1": 0.5, "knn_top1": 0.4, "linear_fast_top1": 0.6},
                   "pixels": {"linear_top1": 0.93, "knn_top1": 0.95}}}
    table = runner.format_table(results)
    assert "Barlow Twins" in table and "95.1%" in table and "random init" in table
    # the online probe first, then fine-tuning, whatever the order of the keys
    assert "online_linear_top1: 75.0%; semi_1pct_top1: 50.0%" in table
    assert len(table.splitlines()) == 5
    path = runner.write_results(results, str(tmp_path))
    import json
    assert json.load(open(path))["baselines"]["pixels"]["knn_top1"] == 0.95
    assert "online_linear_top1" in json.load(open(path))


def test_a_new_evaluation_replaces_the_results_it_supersedes(tmp_path):
    """results.json holds one evaluation of one set of weights: a later evaluation of other
    weights replaces every number; one of the same weights keeps only what training
    measured of them (its time, the online probe)."""
    import json
    old = {"weights": {"file": "backbone.msgpack", "step": 4, "digest": "sha256:a"},
           "linear_top1": 0.9, "semi_10pct_top1": 0.7, "train_seconds": 12.0,
           "online_linear_top1": 0.6}
    path = runner.write_results(old, str(tmp_path))
    runner.write_results({"weights": {"file": "backbone.msgpack", "step": 4,
                                      "digest": "sha256:a"}, "knn_top1": 0.5}, str(tmp_path))
    saved = json.load(open(path))
    assert saved["knn_top1"] == 0.5 and saved["train_seconds"] == 12.0
    assert saved["online_linear_top1"] == 0.6
    assert "linear_top1" not in saved and "semi_10pct_top1" not in saved   # not re-measured
    runner.write_results({"weights": {"file": "backbone.msgpack", "step": 8,
                                      "digest": "sha256:b"}, "linear_top1": 0.95},
                         str(tmp_path))
    assert json.load(open(path)) == {"weights": {"file": "backbone.msgpack", "step": 8,
                                                 "digest": "sha256:b"}, "linear_top1": 0.95}


def test_evaluate_features_uses_the_eval_config():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 8))
    y = (x[:, 0] > 0).astype(np.int32)
    cfg = ml_collections.ConfigDict(dict(
        linear_fast=dict(l2_grid=(1e-4, 1e-2), holdout_fraction=0.2, max_iter=50),
        knn=dict(k=5, temperature=0.1, bank_chunk=64)))
    r = runner.evaluate_features(x[:100], y[:100], x[100:], y[100:], 2, cfg)
    assert set(r) == {"linear_fast_top1", "linear_fast_top5", "linear_fast_l2", "knn_top1",
                      "knn_top5"}
    assert r["linear_fast_top1"] > 0.85 and r["linear_fast_l2"] in (1e-4, 1e-2)


def test_probe_subset_is_class_balanced_deterministic_and_optional():
    from bt_jax.data.sources import Split
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), [50, 100, 150, 100]).astype(np.int32)
    split = Split(rng.integers(0, 255, (400, 4, 4, 3), dtype=np.uint8), labels, 4)
    sub = common.probe_subset(split, 80, seed=3)
    assert len(sub) == 80 and np.bincount(sub.labels).tolist() == [20, 20, 20, 20]
    again = common.probe_subset(split, 80, seed=3)
    np.testing.assert_array_equal(sub.images, again.images)
    rows = {img.tobytes(): lab for img, lab in zip(split.images, split.labels)}
    assert all(rows[img.tobytes()] == lab for img, lab in zip(sub.images, sub.labels))
    assert common.probe_subset(split, 0, seed=3) is split
    assert common.probe_subset(split, 400, seed=3) is split


def test_principal_axes_span_the_rows_with_their_variances():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 6)).astype(np.float32)
    wide = np.concatenate([x, x, -2 * x], axis=1)              # [50, 18], rank 6
    basis, variances = linear_fast.principal_axes(wide)
    assert basis.shape == (18, 6) and variances.shape == (6,)
    np.testing.assert_allclose(basis.T @ basis, np.eye(6), atol=1e-5)
    np.testing.assert_allclose(wide @ basis @ basis.T, wide, atol=1e-4)
    projected = wide.astype(np.float64) @ basis
    np.testing.assert_allclose(np.mean(projected ** 2, 0), variances, rtol=1e-4)
    assert linear_fast.principal_axes(wide, max_features=10)[0] is None   # too wide: not whitened


def _probe_weights_float64(x, y, l2, num_classes):
    """Float64 reference optimum of mean cross-entropy + l2/2 |W|^2 (scikit-learn's
    multinomial logistic regression, C = 1 / (l2 N), no penalty on the intercept)."""
    from sklearn.linear_model import LogisticRegression
    clf = LogisticRegression(C=1.0 / (l2 * len(y)), tol=1e-12, max_iter=20000)
    clf.fit(x.astype(np.float64), y)
    return clf.coef_.T, clf.intercept_


def _objective_float64(x, y, w, b, l2):
    logits = x.astype(np.float64) @ w + b
    log_p = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    return -log_p[np.arange(len(y)), y].mean() + 0.5 * l2 * np.sum(w ** 2)


@pytest.mark.parametrize("l2", [1e-4, 1e-2])
def test_whitened_lbfgs_reaches_the_float64_optimum_on_rank_deficient_pixels(l2):
    """Upsampled, grey-replicated digits (768 correlated features, rank <= 64): the
    preconditioned fit, mapped back to the 768 standardised features, reaches the float64
    optimum's objective and predicts as it does."""
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    img = np.repeat(np.repeat(x[:400].reshape(-1, 8, 8), 2, 1), 2, 2)
    pixels = np.repeat(img[..., None], 3, -1).reshape(400, -1).astype(np.float32)
    xs, _ = common.standardize_features(pixels, pixels[:1])
    y = y[:400].astype(np.int32)
    basis, variances = linear_fast.principal_axes(xs)
    z = (xs @ basis) / np.sqrt(variances)
    fit = linear_fast._fit_softmax_lbfgs(z, y, variances, np.asarray([l2], np.float32),
                                      num_classes=10, max_iter=100)
    w = basis @ (np.asarray(fit["w"][0], np.float64) / np.sqrt(variances)[:, None])
    b = np.asarray(fit["b"][0], np.float64)
    want_w, want_b = _probe_weights_float64(xs, y, l2, 10)
    got, want = _objective_float64(xs, y, w, b, l2), _objective_float64(xs, y, want_w, want_b, l2)
    assert got <= want + 1e-3 * max(want, 1.0), (got, want)
    agree = np.mean(np.argmax(xs @ w + b, 1) == np.argmax(xs @ want_w + want_b, 1))
    assert agree >= 0.99
