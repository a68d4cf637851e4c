"""FLOPs and bytes of a compiled program, counted over its HLO text (`compiled.as_text()`).

XLA:GPU compiled for compile-only devices reports no cost (`compiled.cost_analysis()` is
None), so the GPU plan counts them itself, by the rules of XLA's own `HloCostAnalysis`
(xla/service/hlo_cost_analysis.cc), which gives the TPU plan its numbers:

- a dot: 2 x (elements of its result) x (the product of its contracting dimensions);
- a convolution (XLA's `convolution`, or XLA:GPU's cuDNN calls `__cudnn$convForward`,
  `__cudnn$convBackwardInput`, `__cudnn$convBackwardFilter`, which carry the forward
  convolution's window and dimension labels): 2 x batch x output features x input
  features per group x, per spatial dimension, the (output position, kernel tap) pairs
  that land inside the input, not in its padding;
- a cuBLAS call (`__cublas$gemm`, `__cublas$lt$matmul`): as a dot, from the dimension
  numbers of its backend config;
- an elementwise op: one per element of its result, except the transcendental ones
  (exp, log, tanh, rsqrt, ...), which HloCostAnalysis counts apart;
- a reduce: one per element of its input (its reducer is one op per element here).

Each computation counts as often as it runs: once per fusion or call that reaches it, and a
while loop's body its known trip count of times. Bytes are the kernels' traffic: for each
instruction of the entry computation (and of while bodies) that runs as a kernel or a
copy, the bytes of its operands and of its result. Both are counts over the program, not
measurements.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Optional

from bt_jax.plan.hlo import DTYPE_BYTES, array_bytes

_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<type>.+?)\s+"
    r"(?P<op>[a-z][a-z0-9\-]*)\((?P<rest>.*)$")
_HEADER = re.compile(r"^(?P<entry>ENTRY\s+)?%?(?P<name>[\w.\-]+)\s+\(.*\)\s+->\s+.*\{\s*$")
_ARRAY = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")
_OPERAND = re.compile(r"%([\w.\-]+)")
_CALLS = re.compile(r"\bcalls=%?([\w.\-]+)")
_BODY = re.compile(r"\bbody=%?([\w.\-]+)")
_BRANCHES = re.compile(r"\bbranch_computations=\{([^}]*)\}")
_TRUE_FALSE = re.compile(r"\b(?:true|false)_computation=%?([\w.\-]+)")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"([0-9]+)"\}')
_WINDOW = re.compile(r"\bwindow=\{([^}]*)\}")
_DIM_LABELS = re.compile(r"\bdim_labels=([0-9a-z]+)_([0-9a-z]+)->([0-9a-z]+)")
_TARGET = re.compile(r'custom_call_target="([^"]+)"')
_DOT_DIMS = {key: re.compile(key + r"=\{([0-9,]*)\}") for key in
             ("lhs_contracting_dims", "lhs_batch_dims")}
_CUBLAS_CONTRACTING = re.compile(r'"lhs_contracting_dimensions":\[([^\]]*)\]')

# Elementwise opcodes HloCostAnalysis counts one FLOP per element for, and those it counts
# as transcendentals instead (not FLOPs).
ELEMENTWISE = frozenset((
    "add", "subtract", "multiply", "divide", "remainder", "maximum", "minimum", "negate",
    "abs", "sign", "compare", "select", "and", "or", "xor", "not", "clamp", "floor", "ceil",
    "round-nearest-even", "round-nearest-afz", "convert", "shift-left",
    "shift-right-logical", "shift-right-arithmetic", "is-finite", "real", "imag"))
TRANSCENDENTAL = frozenset((
    "exponential", "exponential-minus-one", "log", "log-plus-one", "tanh", "logistic",
    "rsqrt", "sqrt", "cbrt", "power", "sine", "cosine", "tan", "atan2", "erf"))
# Instructions that move no bytes of their own: views, tuples, the halves of async pairs
# whose start already counted, and what only names a buffer.
_NO_TRAFFIC = frozenset((
    "parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all",
    "partition-id", "replica-id", "iota", "all-reduce-done", "all-gather-done",
    "collective-permute-done", "async-done", "async-update", "copy-done", "send-done",
    "recv-done", "opt-barrier"))
CUDNN_CONVOLUTIONS = ("__cudnn$convForward", "__cudnn$convBackwardInput",
                      "__cudnn$convBackwardFilter", "__cudnn$convBiasActivationForward")
CUBLAS_GEMMS = ("__cublas$gemm", "__cublas$lt$matmul")


@dataclasses.dataclass(frozen=True)
class Instruction:
    """One HLO instruction: its name, result arrays [(dtype, dims)], opcode, operand
    names, and the text after the opcode's "(" (operands and attributes)."""
    name: str
    arrays: tuple[tuple[str, tuple[int, ...]], ...]
    op: str
    operands: tuple[str, ...]
    rest: str

    @property
    def elements(self) -> int:
        """Elements of its first result array (the one that matters for every op counted
        here: a cuDNN call's second result is its scratch space)."""
        return _prod(self.arrays[0][1]) if self.arrays else 0

    @property
    def bytes(self) -> int:
        return sum(array_bytes(t, ",".join(map(str, d))) for t, d in self.arrays)


@dataclasses.dataclass
class Module:
    """A parsed HLO module: its computations (name -> [Instruction]), the entry's name,
    and every instruction by name (names are unique within a module)."""
    computations: dict
    entry: str
    by_name: dict


def _prod(dims) -> int:
    out = 1
    for d in dims:
        out *= d
    return out


def _arrays(type_text: str) -> tuple:
    return tuple((t, tuple(int(x) for x in d.split(",") if x))
                 for t, d in _ARRAY.findall(type_text) if t in DTYPE_BYTES)


def _split_operands(rest: str) -> tuple[str, str]:
    """(the operand list, the attributes) of the text after an opcode's "("."""
    depth = 1
    for i, ch in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            return rest[:i], rest[i + 1:]
    return rest, ""


def parse(hlo_text: str) -> Module:
    """The computations and instructions of an HLO module's text."""
    computations, by_name, entry, current = {}, {}, "", None
    for line in hlo_text.splitlines():
        header = _HEADER.match(line)
        if header:
            current = computations.setdefault(header.group("name"), [])
            if header.group("entry"):
                entry = header.group("name")
            continue
        m = _INSTRUCTION.match(line)
        if not m or current is None:
            continue
        operand_text, attributes = _split_operands(m.group("rest"))
        inst = Instruction(name=m.group("name"), arrays=_arrays(m.group("type")),
                           op=m.group("op"), operands=tuple(_OPERAND.findall(operand_text)),
                           rest=attributes)
        current.append(inst)
        by_name[inst.name] = inst
    return Module(computations, entry, by_name)


def _operand(module: Module, inst: Instruction, i: int) -> tuple[int, ...]:
    return module.by_name[inst.operands[i]].arrays[0][1]


def dot_flops(module: Module, inst: Instruction) -> int:
    """2 x result elements x contracted elements of a `dot`."""
    m = _DOT_DIMS["lhs_contracting_dims"].search(inst.rest)
    lhs = _operand(module, inst, 0)
    contracted = _prod(lhs[int(d)] for d in (m.group(1).split(",") if m else []) if d)
    return 2 * inst.elements * contracted


def cublas_flops(module: Module, inst: Instruction) -> int:
    """A cuBLAS gemm call: as a dot, its contracting dimensions from its backend config."""
    m = _CUBLAS_CONTRACTING.search(inst.rest)
    lhs = _operand(module, inst, 0)
    dims = [int(d.strip().strip('"')) for d in m.group(1).split(",") if d.strip()] if m else []
    return 2 * inst.elements * _prod(lhs[d] for d in dims)


def _window(text: str) -> dict:
    """XLA's window attribute "size=3x3 stride=2x2 pad=1_1x1_1 lhs_dilate=... rhs_dilate=..."
    -> {"size": [3, 3], "stride": [2, 2], "pad": [(1, 1), (1, 1)], ...} (defaults filled)."""
    fields = dict(item.split("=", 1) for item in text.split() if "=" in item)
    size = [int(x) for x in fields["size"].split("x")]
    ones = "x".join("1" * len(size))

    def ints(key):
        return [int(x) for x in fields.get(key, ones).split("x")]

    pads = [tuple(int(v) for v in p.split("_"))
            for p in fields.get("pad", "x".join(["0_0"] * len(size))).split("x")]
    return {"size": size, "stride": ints("stride"), "pad": pads, "lhs_dilate": ints("lhs_dilate"),
            "rhs_dilate": ints("rhs_dilate")}


def valid_taps(in_size: int, out_size: int, kernel: int, stride: int, pad_low: int,
               lhs_dilate: int = 1, rhs_dilate: int = 1) -> int:
    """(output position, kernel tap) pairs of one spatial dimension whose input position
    lies inside the (dilated) input rather than in its padding or its dilation holes."""
    dilated = (in_size - 1) * lhs_dilate + 1 if in_size else 0
    count = 0
    for o in range(out_size):
        for k in range(kernel):
            i = o * stride + k * rhs_dilate - pad_low
            if 0 <= i < dilated and i % lhs_dilate == 0:
                count += 1
    return count


def convolution_flops(lhs: tuple, rhs: tuple, out: tuple, labels: tuple,
                      window: dict) -> int:
    """FLOPs of a forward convolution from its input (lhs), filter (rhs) and output
    shapes, its dim_labels (lhs, rhs, out, e.g. ("b01f", "o01i", "b01f")) and window.
    2 x batch x output features x input features per group x the valid taps of each
    spatial dimension; a grouped convolution's filter already holds input features per
    group."""
    lhs_l, rhs_l, out_l = labels
    batch = out[out_l.index("b")]
    out_features = out[out_l.index("f")]
    in_per_group = rhs[rhs_l.index("i")]
    taps = 1
    for d in range(len(window["size"])):
        taps *= valid_taps(lhs[lhs_l.index(str(d))], out[out_l.index(str(d))],
                           window["size"][d], window["stride"][d], window["pad"][d][0],
                           window["lhs_dilate"][d], window["rhs_dilate"][d])
    return 2 * batch * out_features * in_per_group * taps


def _convolution_shapes(module: Module, inst: Instruction, target: str) -> tuple:
    """(input, filter, output) shapes of the forward convolution a conv instruction or a
    cuDNN call computes or differentiates."""
    result = inst.arrays[0][1]
    a, b = _operand(module, inst, 0), _operand(module, inst, 1)
    if target == "__cudnn$convBackwardFilter":     # (input, output grad) -> filter grad
        return a, result, b
    if target == "__cudnn$convBackwardInput":      # (output grad, filter) -> input grad
        return result, b, a
    return a, b, result                            # (input, filter) -> output


def conv_flops(module: Module, inst: Instruction, target: str = "") -> int:
    labels = _DIM_LABELS.search(inst.rest)
    if not labels:
        return 0
    window = _WINDOW.search(inst.rest)      # none: no spatial dimensions (a dot as a conv)
    window = _window(window.group(1)) if window else {
        "size": [], "stride": [], "pad": [], "lhs_dilate": [], "rhs_dilate": []}
    lhs, rhs, out = _convolution_shapes(module, inst, target)
    return convolution_flops(lhs, rhs, out, labels.groups(), window)


def instruction_flops(module: Module, inst: Instruction) -> int:
    """FLOPs of one instruction alone (not of what it calls)."""
    if inst.op == "dot":
        return dot_flops(module, inst)
    if inst.op == "convolution":
        return conv_flops(module, inst)
    if inst.op == "custom-call":
        target = _TARGET.search(inst.rest)
        target = target.group(1) if target else ""
        if target in CUDNN_CONVOLUTIONS:
            return conv_flops(module, inst, target)
        if target in CUBLAS_GEMMS:
            return cublas_flops(module, inst)
        return 0
    if inst.op in ELEMENTWISE:
        return inst.elements
    if inst.op == "reduce":
        return sum(_prod(module.by_name[o].arrays[0][1]) for o in
                   inst.operands[:max(len(inst.operands) // 2, 1)])
    return 0


def _callees(inst: Instruction) -> list[tuple[str, int]]:
    """(computation, times it runs) for each computation an instruction runs: a fusion's
    or call's body once, a while loop's body its known trip count (1 where unknown), the
    largest branch of a conditional is left to the caller (all are returned, once)."""
    if inst.op == "while":
        body = _BODY.search(inst.rest)
        trips = _TRIP_COUNT.search(inst.rest)
        return [(body.group(1), int(trips.group(1)) if trips else 1)] if body else []
    out = [(m, 1) for m in _CALLS.findall(inst.rest)]
    branches = _BRANCHES.search(inst.rest)
    if branches:
        out += [(b.strip().lstrip("%"), 1) for b in branches.group(1).split(",") if b.strip()]
    out += [(b, 1) for b in _TRUE_FALSE.findall(inst.rest)]
    return out


def computation_flops(module: Module, name: str, memo: Optional[dict] = None) -> int:
    """FLOPs of one run of a computation and of everything it runs (a conditional counts
    its most expensive branch)."""
    memo = {} if memo is None else memo
    if name in memo:
        return memo[name]
    memo[name] = 0   # a cycle (there are none in a valid module) counts nothing twice
    total = 0
    for inst in module.computations.get(name, []):
        total += instruction_flops(module, inst)
        callees = _callees(inst)
        if inst.op == "conditional":
            total += max((computation_flops(module, c, memo) for c, _ in callees), default=0)
        else:
            total += sum(n * computation_flops(module, c, memo) for c, n in callees)
    memo[name] = total
    return total


def computation_bytes(module: Module, name: str) -> int:
    """Bytes read and written by the kernels of a computation: each instruction's operands
    and result, a while loop's body times its trip count."""
    total = 0
    for inst in module.computations.get(name, []):
        if inst.op == "while":
            total += sum(n * computation_bytes(module, c) for c, n in _callees(inst))
            continue
        if inst.op in _NO_TRAFFIC:
            continue
        operands = sum(module.by_name[o].bytes for o in inst.operands if o in module.by_name)
        total += operands + inst.bytes
    return total


def matmul_flops(module: Module) -> int:
    """FLOPs of the module's dots and convolutions alone (cuDNN and cuBLAS calls too),
    each counted once: those no two compilers should count differently."""
    total = 0
    for insts in module.computations.values():
        for inst in insts:
            if inst.op in ("dot", "convolution", "custom-call"):
                total += instruction_flops(module, inst)
    return total


def count(hlo_text: str) -> dict:
    """{"flops", "matmul_flops", "bytes_accessed"} per device of one run of the module's
    entry."""
    module = parse(hlo_text)
    return {"flops": float(computation_flops(module, module.entry)),
            "matmul_flops": float(matmul_flops(module)),
            "bytes_accessed": float(computation_bytes(module, module.entry))}
