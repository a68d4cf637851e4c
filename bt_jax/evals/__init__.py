"""Evaluation protocols, chosen by name in config.eval.protocols (big_vision's `evals`
are the model): each is one module of this package that defines `PROTOCOL`, a
`common.Protocol`, and one line in PROTOCOLS below (`bt_jax.registry`).

- linear_fast: L-BFGS softmax regression on cached features (`linear_fast.py`);
- knn: weighted kNN on cached features (`knn.py`);
- linear_sgd: the paper's linear probe, SGD on augmented views (`linear_sgd.py`);
- finetune: semi-supervised fine-tuning on label fractions (`finetune.py`).

config.eval.protocols lists these four by default (BUILT_IN); a protocol registered
beside them runs only where config.eval.protocols names it.

`runner.evaluate_all` runs the listed protocols on the trained encoder and (where a
protocol says so) on the random-init and raw-pixel baselines, and builds results.json.
"""
from bt_jax.registry import Registry

PROTOCOLS = Registry("protocol", "eval.protocols", {
    "linear_fast": "bt_jax.evals.linear_fast:PROTOCOL",
    "knn": "bt_jax.evals.knn:PROTOCOL",
    "linear_sgd": "bt_jax.evals.linear_sgd:PROTOCOL",
    "finetune": "bt_jax.evals.finetune:PROTOCOL",
}, home="bt_jax/evals/__init__.py")


# The default of config.eval.protocols.
BUILT_IN = ("linear_fast", "knn", "linear_sgd", "finetune")


def get_protocol(name: str):
    """The `common.Protocol` registered as `name`; ConfigError naming the known ones."""
    return PROTOCOLS.get(name)
