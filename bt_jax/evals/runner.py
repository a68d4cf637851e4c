"""Runs the evaluation protocols of config.eval.protocols on the trained encoder and on
the random-init and raw-pixel baselines, and turns them into results.json and a table.
"""
from __future__ import annotations

import json
import time
from typing import Optional

import flax.linen as nn
import numpy as np

from bt_jax.io import run_dir
from bt_jax import diagnostics, evals, progress
from bt_jax.data import pipeline, sources
from bt_jax.evals import classifier, knn, linear_fast
from bt_jax.evals.common import (Context, Representation, extract_features, feature_fn,
                                 pixel_features, probe_subset, topk_accuracy)


def evaluations_off_line(monitor_cfg, eval_cfg) -> str:
    """The one line a run with eval.enabled=False prints: what it turns off, or ""."""
    if eval_cfg.enabled:
        return ""
    line = ("eval.enabled=False: no evaluation runs (no protocol, no results.json"
            + (", no kNN monitor" if monitor_cfg.knn_every_epochs > 0 else "") + ")")
    if monitor_cfg.online_probe:   # part of the train state: a resume must restore it
        line += "; the online probe still trains (monitor.online_probe=False stops it)"
    return line + "."


def selected_protocols(eval_cfg) -> list:
    """The `common.Protocol`s of eval_cfg.protocols that their own settings
    (eval_cfg.<name>) want run."""
    chosen = [evals.get_protocol(name) for name in eval_cfg.protocols]
    return [p for p in chosen if p.wanted(eval_cfg[p.name])]


def evaluate_features(train_x, train_y, test_x, test_y, num_classes: int, eval_cfg) -> dict:
    """The cached-feature probes of one representation (the fast linear probe and kNN,
    with eval_cfg.linear_fast and eval_cfg.knn): {"linear_fast_top1", "linear_fast_top5",
    "linear_fast_l2", "knn_top1", "knn_top5"}."""
    return {**linear_fast.probe(train_x, train_y, test_x, test_y, num_classes,
                                eval_cfg.linear_fast),
            **knn.probe(train_x, train_y, test_x, test_y, num_classes, eval_cfg.knn)}


def summary(results: dict) -> str:
    """A protocol's results in a few words: "top-1 87.30%" for one top-1 accuracy, each
    named for several ("semi_1pct top-1 45.10%, semi_10pct top-1 60.20%"), else its keys."""
    top1 = {k[:-len("_top1")]: v for k, v in results.items() if k.endswith("_top1")}
    if len(top1) == 1:
        return f"top-1 {100 * next(iter(top1.values())):.2f}%"
    if top1:
        return ", ".join(f"{name} top-1 {100 * v:.2f}%" for name, v in top1.items())
    return "results " + ", ".join(sorted(results)) if results else "no results"


def run_protocol(ctx: Context, rep: Representation, protocol, settings) -> dict:
    """protocol.run on one representation with its settings (eval.<name>), then its
    progress line: "<representation>: <title>: <summary> (<seconds> s)", the same for a
    built-in protocol and one a user registered."""
    start = time.perf_counter()
    results = protocol.run(ctx, rep, settings)
    progress.say(f"{rep.label}: {protocol.title(settings)}: {summary(results)} "
                 f"({time.perf_counter() - start:.1f} s)")
    return results


def probe_representation(ctx: Context, rep: Representation, protocols: list,
                         eval_cfg) -> dict:
    """Every protocol of `protocols` on one representation, each with its own settings
    (eval_cfg.<name>) and its progress line (`run_protocol`), and "linear_top1" /
    "linear_top5": those of the eval_cfg.linear_protocol protocol."""
    r = {}
    for protocol in protocols:
        r.update(run_protocol(ctx, rep, protocol, eval_cfg[protocol.name]))
    r["linear_top1"] = r[f"{eval_cfg.linear_protocol}_top1"]
    r["linear_top5"] = r[f"{eval_cfg.linear_protocol}_top5"]
    return r


def evaluate_all(eval_cfg, backbone: nn.Module, trained: dict, random_init: dict,
                 train_split, test_split, stats=None, *, seed: int, image_size: int,
                 split_name: str = "test", online_probe: Optional[dict] = None,
                 workdir: Optional[str] = None,
                 trained_features: Optional[tuple[np.ndarray, np.ndarray]] = None) -> dict:
    """Trained encoder, randomly initialised encoder and raw pixels, probed the same way: by
    the protocols of config.eval.protocols (`eval_cfg`) that their settings want run
    (`selected_protocols`; fine-tuning on the trained encoder only).

    Args:
      eval_cfg: config.eval; seed: the run's; image_size: config.data.image_size, the
        pretraining views' (the fine-tuning's and SGD probe's views).
      split_name: what test_split is ("test", or "validation": `sources.eval_split_name`).
      backbone: the Flax backbone; trained, random_init: its {"params", "batch_stats"}
        (never changed: the probes only read them).
      train_split, test_split: labelled in-memory splits.
      stats: (mean [3], std [3]) the encoder's inputs were normalised with in pretraining;
        default: the train split's channel statistics.
      online_probe: the online probe's {"w": [F, C], "b": [C]}, tested here if given.
      workdir: where tsne.png goes (eval.tsne_points > 0).
      trained_features: ([N, F], [Q, F]) the trained encoder's features of the probe's
        training images and of test_split, if already extracted (the kNN monitor's last).

    Returns:
      {"linear_top1", "linear_top5", "linear_fast_*", "linear_sgd_*", "knn_top1",
       "knn_top5", "online_linear_top1"?, "semi_*"?, "num_train", "num_test",
       "diagnostics": {...} (spectrum of the test features, "collapse": verdict or None),
       "baselines": {"random_init": {...}, "pixels": {...}},
       "eval_seconds": {"trained", "random_init", "pixels"}: wall time of each part}.
    """
    stats = sources.channel_stats(train_split) if stats is None else stats
    e = eval_cfg
    ctx = Context(train=probe_subset(train_split, e.probe_train_examples, seed),
                  test=test_split, labelled=train_split, stats=stats, seed=seed,
                  image_size=image_size)
    train_img = pipeline.eval_arrays(ctx.train, *stats)
    test_img = pipeline.eval_arrays(test_split, *stats)
    encode = classifier.backbone_encoder(backbone)
    protocols = selected_protocols(e)
    embed = feature_fn(backbone, progress.say)   # compiled once, for every representation

    def features(variables, label):
        n, q = len(train_img), len(test_img)
        ticker = progress.Ticker(f"{label}: features of {n:,} training and {q:,} "
                                 f"{split_name} images", n + q,
                                 "images")
        out = (extract_features(backbone, variables, train_img, e.batch_size, apply=embed,
                                ticker=ticker),
               extract_features(backbone, variables, test_img, e.batch_size, apply=embed,
                                ticker=ticker, offset=n))
        ticker.done()
        return out

    reps = ["trained encoder"] + (["random init", "raw pixels"] if e.baselines else [])
    titles = ", ".join(p.title(e[p.name]) for p in protocols)
    progress.say(f"{', '.join(reps)} | {titles} | probes fit on {len(ctx.train):,} labelled "
                 "training images")
    seconds, start = {}, time.perf_counter()
    if trained_features:
        progress.say("trained encoder: features from the kNN monitor's last call")
    train_x, test_x = trained_features or features(trained, "trained encoder")
    results = probe_representation(ctx, Representation("trained encoder", encode, trained,
                                                       train_x, test_x), protocols, e)
    if online_probe is not None:
        scores = test_x @ np.asarray(online_probe["w"]) + np.asarray(online_probe["b"])
        results["online_linear_top1"] = topk_accuracy(scores, test_split.labels, 1)
        results["online_linear_top5"] = topk_accuracy(scores, test_split.labels, 5)
    spectrum = diagnostics.spectrum_stats(test_x)
    results["diagnostics"] = {**{f"test_features_{k}": v
                                 for k, v in diagnostics.scalars(spectrum).items()},
                              "collapse": diagnostics.collapse_verdict(spectrum)}
    if workdir is not None and e.tsne_points > 0:
        diagnostics.plot_embedding_2d(test_x, test_split.labels,
                                      run_dir.path(workdir, run_dir.TSNE),
                                      max_points=e.tsne_points, seed=seed,
                                      split=split_name)
    results.update(num_train=len(ctx.train), num_test=len(test_split),
                   eval_split=split_name)
    seconds["trained"] = time.perf_counter() - start
    if e.baselines:
        on_baselines = [p for p in protocols if p.baselines]
        start = time.perf_counter()
        random_r = probe_representation(ctx, Representation(
            "random init", encode, random_init, *features(random_init, "random init")),
            on_baselines, e)
        seconds["random_init"], start = time.perf_counter() - start, time.perf_counter()
        channels = train_split.images.shape[-1]
        pixels_r = probe_representation(ctx, Representation(
            "raw pixels", classifier.pixel_encoder, {}, pixel_features(train_img, channels),
            pixel_features(test_img, channels)), on_baselines, e)
        seconds["pixels"] = time.perf_counter() - start
        results["baselines"] = {"random_init": random_r, "pixels": pixels_r}
    results["eval_seconds"] = seconds
    return results


def format_table(results: dict) -> str:
    """The results as a small text table, top-1 accuracies in percent ("-" where a probe
    did not run): a column per protocol, a registered one's too, then the online probe,
    semi-supervised and collapse lines if present."""
    rows = [("Barlow Twins", results)]
    rows += [(name.replace("_", " "), r) for name, r in results.get("baselines", {}).items()]
    columns = [("linear (sgd)", "linear_sgd_top1"), ("linear (fast)", "linear_fast_top1"),
               ("kNN", "knn_top1")]
    known = {key for _, key in columns} | {"linear_top1"}
    columns += [(key[:-len("_top1")].replace("_", " "), key) for key in results   # registered
                if key.endswith("_top1") and key not in known
                and not key.startswith(("online_", "semi_"))]
    columns = [c for c in columns if any(c[1] in r for _, r in rows)] or [
        ("linear top-1", "linear_top1"), ("kNN top-1", "knn_top1")]

    def cell(r, key):
        return f"{100 * r[key]:.1f}%" if key in r else "-"

    split = results.get("eval_split", "test")
    lines = [f"{'representation':<16}" + "".join(f" {title:>14}" for title, _ in columns)
             + f"   ({split} split)"]
    for name, r in rows:
        lines.append(f"{name:<16}" + "".join(f" {cell(r, key):>14}" for _, key in columns))
    extra = [f"{k}: {100 * results[k]:.1f}%" for prefix in ("online_", "semi_")
             for k in results if k.startswith(prefix) and k.endswith("_top1")]
    if extra:
        lines.append("; ".join(extra))
    collapse = results.get("diagnostics", {}).get("collapse")
    if collapse:
        lines.append(f"warning: test features show {collapse}")
    return "\n".join(lines)


# What training measured of its final weights, which an evaluation does not measure again:
# kept in results.json when a later evaluation is of the same weights.
TRAINING_FACTS = ("train_seconds", "online_linear_top1", "online_linear_top5")


def write_results(results: dict, workdir: str) -> str:
    """Writes results into workdir/results.json (atomically); returns its path.

    A new evaluation replaces the file: every number in it is of one set of weights,
    `results["weights"]`, measured by that evaluation. Only TRAINING_FACTS of the same
    weights (the same "digest") that `results` lacks are carried over."""
    path = run_dir.path(workdir, run_dir.RESULTS)
    old = run_dir.read_json(path)
    merged = dict(results)
    if (isinstance(old, dict) and "weights" in results
            and (old.get("weights") or {}).get("digest") == results["weights"]["digest"]):
        merged.update({k: old[k] for k in TRAINING_FACTS if k in old and k not in results})
    run_dir.atomic_write(path, json.dumps(merged, indent=2))
    return path
