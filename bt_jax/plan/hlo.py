"""The collectives of a compiled program, read from its HLO text (`compiled.as_text()`).

Every all-reduce, all-gather, reduce-scatter, all-to-all and collective-permute of the
module (in the entry computation or inside the async-collective fusions XLA:TPU makes),
with its result shapes, bytes and replica groups. `wire_bytes` is what a ring algorithm
sends per device for it: an estimate, not a trace.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Optional, Sequence

import numpy as np

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
               "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
               "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1}
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<type>.+?)\s+"
    r"(?P<op>" + "|".join(KINDS) + r")(?P<start>-start)?\((?P<rest>.*)$")
_ARRAY = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")
_GROUPS = re.compile(r"replica_groups=(\{(?:\{[0-9,]*\},?)*\}|\[[0-9,]+\]<=\[[0-9,]+\][^,\s]*)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_DIMENSIONS = re.compile(r"\bdimensions=\{([0-9]+)\}")
_HEADER = re.compile(r"^(?:ENTRY\s+)?%?[\w.\-]+\s+\(.*\)\s+->\s+.*\{\s*$")


@dataclasses.dataclass(frozen=True)
class Collective:
    """One collective: kind, result shapes (["f32[64,256]", ...]), bytes of its result,
    the replica groups as HLO writes them and their size, the op's JAX name, and the
    dimension an all-gather or reduce-scatter works along."""
    name: str
    kind: str
    shapes: tuple[str, ...]
    bytes: int
    replica_groups: str
    group_size: int
    op_name: str
    dimension: Optional[int] = None     # the gathered / scattered dimension

    @property
    def backward(self) -> bool:
        """Whether JAX's name places it in the backward pass (a transpose)."""
        return "transpose(" in self.op_name

    @property
    def wire_bytes(self) -> float:
        """Bytes one device sends for it with a ring algorithm over its group
        (`ring_bytes`)."""
        return ring_bytes(self.kind, self.group_size, self.bytes)

    def node_split(self, node_of: Optional[Sequence[int]]) -> tuple[float, float]:
        """(bytes a device sends within its node, bytes it sends to other nodes) for a
        hierarchical algorithm over a group that spans k nodes of g devices each: the
        collective among the node's g devices (NVLink), then among the k nodes on each
        device's 1/g share (the network). node_of: the node of each device id of the
        replica groups (None: one node, as a TPU slice)."""
        if not node_of:
            return self.wire_bytes, 0.0
        group = expand_groups(self.replica_groups, len(node_of))[0]
        k = len({node_of[i] for i in group})
        if k <= 1:
            return self.wire_bytes, 0.0
        if self.kind == "collective-permute":
            return 0.0, float(self.bytes)
        g = max(len(group) // k, 1)
        return ring_bytes(self.kind, g, self.bytes), ring_bytes(self.kind, k, self.bytes) / g

    @property
    def operand_shapes(self) -> tuple[str, ...]:
        """What each device puts in: the result shapes, but an all-gather's gathered
        dimension divided by the group size and a reduce-scatter's multiplied by it."""
        if self.kind not in ("all-gather", "reduce-scatter") or self.dimension is None:
            return self.shapes
        out = []
        for shape in self.shapes:
            dtype, dims = shape[:-1].split("[")
            sizes = [int(x) for x in dims.split(",") if x]
            if self.dimension < len(sizes):
                n = max(self.group_size, 1)
                sizes[self.dimension] = (sizes[self.dimension] // n if self.kind == "all-gather"
                                         else sizes[self.dimension] * n)
            out.append(f"{dtype}[{','.join(map(str, sizes))}]")
        return tuple(out)

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "shapes": list(self.shapes),
                "operand_shapes": list(self.operand_shapes), "wire_bytes": self.wire_bytes,
                "backward": self.backward}


def ring_bytes(kind: str, n: int, size: int) -> float:
    """Bytes one device sends for a collective of `size` bytes (its result; a
    reduce-scatter's result is 1/n of its input) with a ring algorithm over n devices:
    all-reduce 2 (n - 1) / n x size; all-gather and all-to-all (n - 1) / n x size;
    reduce-scatter (n - 1) x size; collective-permute its size."""
    n = max(n, 1)
    if kind == "all-reduce":
        return 2 * (n - 1) / n * size
    if kind == "reduce-scatter":
        return float((n - 1) * size)
    if kind == "collective-permute":
        return float(size)
    return (n - 1) / n * size


def expand_groups(groups: str, num_devices: int) -> list[list[int]]:
    """The replica groups as lists of device ids: "{{0,1},{2,3}}" as written; the iota form
    "[2,4]<=[8]" (ids 0..7 reshaped to 2 groups of 4) or "[4,2]<=[2,4]T(1,0)" (reshaped to
    [2,4], transposed, then to 4 groups of 2); none: one group of every device."""
    if not groups or groups == "{}":
        return [list(range(num_devices))]
    if groups.startswith("["):
        m = re.fullmatch(r"\[([0-9,]+)\]<=\[([0-9,]+)\](?:T\(([0-9,]+)\))?", groups)
        shape = [int(x) for x in m.group(1).split(",")]
        ids = np.arange(int(np.prod([int(x) for x in m.group(2).split(",")])))
        ids = ids.reshape([int(x) for x in m.group(2).split(",")])
        if m.group(3):
            ids = ids.transpose([int(x) for x in m.group(3).split(",")])
        return ids.reshape(shape[0], -1).tolist()
    return [[int(x) for x in g.split(",") if x] for g in re.findall(r"\{([0-9,]*)\}", groups)]


def array_bytes(dtype: str, dims: str) -> int:
    """Bytes of one dense array, e.g. ("f32", "64,256") -> 65536."""
    size = 1
    for d in filter(None, dims.split(",")):
        size *= int(d)
    return size * DTYPE_BYTES.get(dtype, 4)


def group_size(groups: str, num_devices: int) -> int:
    """Devices per replica group: "{{0,1,2,3}}" -> 4; the iota form "[2,4]<=[8]" -> 4;
    no groups (every device) -> num_devices."""
    if not groups or groups == "{}":
        return num_devices
    if groups.startswith("["):
        return int(groups[1:groups.index("]")].split(",")[-1])
    first = groups[2:groups.index("}")]
    return len([x for x in first.split(",") if x])


def _result_arrays(type_text: str, kind: str, is_start: bool) -> list[tuple[str, str]]:
    """(dtype, dims) of what the collective produces. An async "-start" op's type is a
    tuple that also holds its operands (all-gather and reduce-scatter: (inputs, outputs),
    as XLA:GPU writes "((f32[256]), f32[32])"; permute: (input, output, contexts)): keep
    the outputs only."""
    arrays = [(t, d) for t, d in _ARRAY.findall(type_text) if t in DTYPE_BYTES]
    if is_start and kind in ("all-gather", "reduce-scatter", "collective-permute",
                             "all-to-all") and len(arrays) >= 2:
        if kind in ("all-gather", "reduce-scatter"):
            half = len(arrays) // 2
            arrays = arrays[half:2 * half]
        else:
            arrays = arrays[1:2]
    return arrays


def _parameter_arrays(header: str) -> set[tuple[str, str]]:
    """(dtype, dims) of a computation's parameters, from its header line
    "%name (p0: f32[16,256], p1: s32[2]) -> (...) {"."""
    params = header.split(") -> ", 1)[0]
    return set(_ARRAY.findall(params[params.find("(") + 1:]))


def collectives(hlo_text: str, num_devices: int) -> list[Collective]:
    """Every collective of a compiled HLO module, each counted once.

    XLA:TPU runs a collective asynchronously as a chain of fusions (start, continuations,
    done), each holding a copy of the collective instruction. The start makes the
    chain's synchronisation state (u32[] scalars); the pieces after it are handed that
    state as parameters, and are not counted again. Nor is the "-done" half of an async
    pair.
    """
    out, continuation = [], False
    for line in hlo_text.splitlines():
        if _HEADER.match(line):
            continuation = not line.startswith("ENTRY") and ("u32", "") in \
                _parameter_arrays(line)
            continue
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        kind, is_start = m.group("op"), bool(m.group("start"))
        arrays = _result_arrays(m.group("type"), kind, is_start)
        if continuation:
            continue      # continues a collective begun in an earlier fusion of its chain
        groups = _GROUPS.search(line)
        groups = groups.group(1) if groups else ""
        op_name = _OP_NAME.search(line)
        dimension = _DIMENSIONS.search(line)
        out.append(Collective(
            name=m.group("name"), kind=kind, shapes=tuple(f"{t}[{d}]" for t, d in arrays),
            bytes=sum(array_bytes(t, d) for t, d in arrays), replica_groups=groups,
            group_size=group_size(groups, num_devices),
            op_name=op_name.group(1) if op_name else "",
            dimension=int(dimension.group(1)) if dimension else None))
    return out


def summarize(items: list[Collective], node_of: Optional[Sequence[int]] = None) -> dict:
    """Counts and bytes per kind, and per pass: {"count", "bytes", "wire_bytes",
    "intra_node_wire_bytes", "inter_node_wire_bytes", "inter_node_count", "by_kind":
    {kind: {"count", "bytes", "wire_bytes"}}, "backward_all_reduce_bytes"}. The backward
    all-reduces carry the gradients (shard_map's transpose of replicated parameters) and
    BatchNorm's backward statistics. node_of: as `Collective.node_split`."""
    by_kind = {}
    for c in items:
        k = by_kind.setdefault(c.kind, {"count": 0, "bytes": 0, "wire_bytes": 0.0})
        k["count"] += 1
        k["bytes"] += c.bytes
        k["wire_bytes"] += c.wire_bytes
    splits = [c.node_split(node_of) for c in items]
    return {"count": len(items), "bytes": sum(c.bytes for c in items),
            "wire_bytes": sum(c.wire_bytes for c in items), "by_kind": by_kind,
            "intra_node_wire_bytes": sum(a for a, _ in splits),
            "inter_node_wire_bytes": sum(b for _, b in splits),
            "inter_node_count": sum(1 for _, b in splits if b > 0),
            "backward_all_reduce_bytes": sum(c.bytes for c in items
                                             if c.kind == "all-reduce" and c.backward)}
