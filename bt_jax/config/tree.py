"""A config as dotted names: {"section.field": value} views of ConfigDicts and of the
nested dicts of config.json files."""
from __future__ import annotations

import ml_collections


def flatten(tree, prefix: str = "") -> dict:
    """{"section.field": value} of a ConfigDict or a nested dict (e.g. a run's config.json),
    lists as tuples: the form `ConfigDict.update_from_flattened_dict` takes."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, (dict, ml_collections.ConfigDict)):
            out.update(flatten(value, name + "."))
        else:
            out[name] = tuple(value) if isinstance(value, list) else value
    return out


def unflatten(flat: dict) -> dict:
    """{"a.b": 1} -> {"a": {"b": 1}}."""
    out: dict = {}
    for name, value in flat.items():
        *parents, leaf = name.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = list(value) if isinstance(value, tuple) else value
    return out


def sub_config(tree, path: str):
    """The section of a config (any ConfigDict or dict tree) at a dotted path ("eval.knn")."""
    node = tree
    for name in path.split("."):
        node = node[name]
    return node


def diff(reference, other) -> list[str]:
    """["field: old -> new", ...] for every leaf field where `other` differs from
    `reference` (two ConfigDict or dict trees; sorted by name; fields only one of them
    has show "(absent)")."""
    a, b = flatten(reference), flatten(other)
    lines = []
    for name in sorted(set(a) | set(b)):
        old, new = a.get(name, "(absent)"), b.get(name, "(absent)")
        if old != new and not (isinstance(old, (tuple, list)) and isinstance(new, (tuple, list))
                               and tuple(old) == tuple(new)):
            lines.append(f"{name}: {old!r} -> {new!r}")
    return lines
