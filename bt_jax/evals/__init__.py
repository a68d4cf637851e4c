"""Evaluation protocols, chosen by name in config.eval.protocols (big_vision's `evals`
are the model): each is one module of this package that defines `PROTOCOL`, a
`common.Protocol`.

- linear_fast: L-BFGS softmax regression on cached features (`linear_fast.py`);
- knn: weighted kNN on cached features (`knn.py`);
- linear_sgd: the paper's linear probe, SGD on augmented views (`linear_sgd.py`);
- finetune: semi-supervised fine-tuning on label fractions (`finetune.py`).

`runner.evaluate_all` runs the listed protocols on the trained encoder and (where a
protocol says so) on the random-init and raw-pixel baselines, and builds results.json.
A new protocol is a new module here plus its name in PROTOCOLS. This file imports nothing
of bt_jax, so that config.py can check names against it.
"""
import importlib

PROTOCOLS = ("linear_fast", "knn", "linear_sgd", "finetune")


def get_protocol(name: str):
    """The `common.Protocol` of module bt_jax.evals.<name>."""
    if name not in PROTOCOLS:
        raise ValueError(f"Unknown evaluation protocol {name!r}; known: {PROTOCOLS}.")
    return importlib.import_module(f"bt_jax.evals.{name}").PROTOCOL
