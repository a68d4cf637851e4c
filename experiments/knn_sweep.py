"""kNN accuracy of finished runs' features and of raw pixels over k and temperature.

  python experiments/knn_sweep.py runs/fmnist_tuning/q14 runs/fmnist_tuning/f01

For each run: its backbone's features of the run's own probe splits (a tuning run's are the
training images without the validation part, scored on the validation part), the weighted
kNN of bt_jax.evaluate (cosine similarity, weights exp(s / T)) for every (k, T) of the grid,
and the same for the raw pixels. The 200 nearest neighbours are found once per
representation; every smaller k takes a prefix of them. Rows go to --csv and stdout.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

KS = (5, 10, 20, 50, 100, 200)
TEMPERATURES = (0.02, 0.05, 0.1, 0.2, 1.0)


def nearest(bank: np.ndarray, queries: np.ndarray, k: int, chunk: int = 1000):
    """(similarities [Q, k], indices [Q, k]) of each query's k most cosine-similar rows of
    bank ([N, F], [Q, F]), most similar first."""
    from bt_jax.evals.common import l2_normalize  # pylint: disable=import-outside-toplevel
    bank_dev = jnp.asarray(l2_normalize(bank))
    top = jax.jit(lambda q: jax.lax.top_k(q @ bank_dev.T, k))
    queries = l2_normalize(queries)
    out = [top(jnp.asarray(queries[i:i + chunk])) for i in range(0, len(queries), chunk)]
    return (np.concatenate([np.asarray(s) for s, _ in out]),
            np.concatenate([np.asarray(i) for _, i in out]))


def weighted_vote_accuracy(sims, idx, train_y, test_y, k: int, temperature: float,
                           num_classes: int) -> float:
    """Top-1 accuracy of the k nearest neighbours' votes weighted by exp(s / T)."""
    weights = np.exp(sims[:, :k] / temperature)
    labels = train_y[idx[:, :k]]
    votes = np.stack([(weights * (labels == c)).sum(1) for c in range(num_classes)], 1)
    return float(np.mean(votes.argmax(1) == test_y))


def sweep_run(workdir: str) -> list[dict]:
    from bt_jax import evaluate  # pylint: disable=import-outside-toplevel
    from bt_jax.evals import common  # pylint: disable=import-outside-toplevel
    from bt_jax.data import sources, pipeline  # pylint: disable=import-outside-toplevel
    config = evaluate.config_of_workdir(workdir)
    backbone, variables, _, _ = evaluate.load_run(workdir, config.model, config.data.image_size)
    train, test = sources.labelled_splits(config.data, config.seed)
    stats = pipeline.normalization_stats(sources.pretrain_split(config.data, config.seed))
    train_img, test_img = (pipeline.eval_arrays(s, *stats) for s in (train, test))
    reps = {"barlow_twins": (common.extract_features(backbone, variables, train_img),
                             common.extract_features(backbone, variables, test_img)),
            "pixels": (common.pixel_features(train_img, train.images.shape[-1]),
                       common.pixel_features(test_img, test.images.shape[-1]))}
    rows = []
    for name, (bank, queries) in reps.items():
        sims, idx = nearest(bank, queries, max(KS))
        for k in KS:
            for t in TEMPERATURES:
                rows.append({"run": os.path.basename(os.path.normpath(workdir)),
                             "representation": name, "split": sources.eval_split_name(config.data),
                             "k": k, "temperature": t,
                             "knn_top1": 100 * weighted_vote_accuracy(
                                 sims, idx, train.labels, test.labels, k, t,
                                 train.num_classes)})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("workdirs", nargs="+")
    p.add_argument("--csv", default=os.path.join(ROOT, "experiments", "results",
                                                 "fashion_mnist_knn_sweep.csv"))
    args = p.parse_args(argv)
    rows = [r for w in args.workdirs for r in sweep_run(w)]
    with open(args.csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "knn_top1": f"{r['knn_top1']:.2f}"} for r in rows)
    for r in rows:
        print(f"{r['run']} {r['representation']:>12} k={r['k']:<3} T={r['temperature']:<4} "
              f"{r['knn_top1']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
