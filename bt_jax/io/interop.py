"""PyTorch weights <-> bt_jax variables: torchvision's ResNet-18/34/50 layout, FAIR's Barlow
Twins checkpoints and solo-learn's.

bt_jax's ResNets name their modules as torchvision does (`bt_jax.models.resnet`), so the
mapping is one rule per leaf:

  torchvision                              bt_jax
  conv1.weight            [O, I, kh, kw]   params  conv1.kernel            [kh, kw, I, O]
  bn1.weight / bn1.bias                    params  bn1.scale / bn1.bias
  bn1.running_mean / running_var           batch_stats bn1.mean / bn1.var
  layer2.0.conv1.weight                    params  layer2_0.conv1.kernel
  layer2.0.downsample.0 / .1               layer2_0.downsample_conv / downsample_bn
  projector.0.weight      [out, in]        params  projector.linear0.kernel [in, out]
  projector.1.*  (BatchNorm1d)             projector.bn0.*
  (`num_batches_tracked` has no counterpart; `fc.*` belongs to the classifier head)

The projector follows FAIR's Sequential: Linear (no bias), BatchNorm1d, ReLU per hidden
layer, then the last Linear, so layer i sits at index 3 i and its BatchNorm at 3 i + 1.

Recognised wrappers (`unwrap`):
- a plain torchvision state dict (FAIR's torch-hub `resnet50.pth` has no `fc`);
- FAIR's training `checkpoint.pth`: {"model": {"module.backbone.*", "module.projector.*",
  "module.bn.*"}} -> the whole BarlowTwins variables (`module.bn` is the loss's
  BatchNorm1d without affine parameters: bt_jax standardises in the loss instead, so its
  running statistics are dropped);
- solo-learn's checkpoints: {"state_dict": {"backbone.*", "projector.*", ...}}. Their
  projector Linears have biases, which bt_jax's projector has not: that is one error
  naming them; `projector=False` loads the backbone alone;
- DataParallel's "module." prefix anywhere.
A CIFAR-stem backbone (3x3 conv1, no max-pool) is recognised from conv1's shape.
"""
from __future__ import annotations

import re
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from bt_jax.errors import ConfigError
from bt_jax.models import Projector, make_backbone
from bt_jax.models.backbones import BACKBONES

ARCHS = tuple(sorted(BACKBONES))
# Keys of PyTorch checkpoints that have no bt_jax counterpart, dropped without a word.
_DROPPED = (re.compile(r"(^|\.)num_batches_tracked$"), re.compile(r"^(fc|classifier)\."),
            re.compile(r"^bn\.(running_mean|running_var)$"))
_BN_LEAVES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def _numpy(x) -> np.ndarray:
    """A torch tensor (any device) or array-like -> numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def unwrap(checkpoint: dict) -> dict[str, np.ndarray]:
    """The flat {torch name: numpy array} of a state dict or of FAIR's / solo-learn's
    checkpoint dicts, DataParallel's "module." prefixes removed."""
    for key in ("model", "state_dict"):
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    out = {}
    for name, value in checkpoint.items():
        if not hasattr(value, "shape"):
            raise ConfigError(f"{name!r} in the checkpoint is a {type(value).__name__}, not a "
                              "tensor: pass a state dict, or FAIR's / solo-learn's checkpoint "
                              "dict (tensors under 'model' or 'state_dict').")
        out[re.sub(r"(^|\.)module\.", r"\1", name)] = _numpy(value)
    return out


def _torch_name(path: tuple[str, ...]) -> str:
    """bt_jax module path + leaf -> torch name, e.g. ("layer2_0", "downsample_bn", "mean") ->
    "layer2.0.downsample.1.running_mean"."""
    *modules, leaf = path
    names = []
    for m in modules:
        if m == "backbone":   # BarlowTwins' backbone: torchvision's names at the top level
            continue
        if m == "projector":
            names.append("projector")
        elif m.startswith("linear") or (m.startswith("bn") and names[:1] == ["projector"]):
            i = int(m[len("linear"):] if m.startswith("linear") else m[2:])
            names.append(str(3 * i + (0 if m.startswith("linear") else 1)))
        elif m == "downsample_conv":
            names.append("downsample.0")
        elif m == "downsample_bn":
            names.append("downsample.1")
        else:
            names.append(re.sub(r"^(layer\d+)_(\d+)$", r"\1.\2", m))
    return ".".join(names + ["weight" if leaf == "kernel" else _BN_LEAVES.get(leaf, leaf)])


def _to_torch_layout(leaf: str, x: np.ndarray) -> np.ndarray:
    if leaf == "kernel":
        return x.transpose(3, 2, 0, 1) if x.ndim == 4 else x.T   # HWIO -> OIHW; [in, out] -> [out, in]
    return x


def _from_torch_layout(leaf: str, x: np.ndarray) -> np.ndarray:
    if leaf == "kernel":
        return x.transpose(2, 3, 1, 0) if x.ndim == 4 else x.T   # OIHW -> HWIO
    return x


def leaf_paths(variables: dict) -> dict[tuple[str, ...], Any]:
    """{(collection, *module path, leaf): array} of {"params", "batch_stats"} trees."""
    out = {}

    def walk(tree, path):
        for k, v in tree.items():
            if isinstance(v, dict) or hasattr(v, "items"):
                walk(v, path + (k,))
            else:
                out[path + (k,)] = v
    walk(variables, ())
    return out


def _nest(flat: dict[tuple[str, ...], np.ndarray]) -> dict:
    out: dict = {}
    for path, value in flat.items():
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = value
    return out


def _check_arch(arch: str) -> None:
    if arch not in BACKBONES:
        raise ConfigError(f"Unknown arch {arch!r}: bt_jax converts {ARCHS}.")


def infer_arch(names) -> str:
    """The ResNet of a set of torch or bt_jax names: bottleneck blocks (conv3) make a
    ResNet-50, six blocks in layer3 a ResNet-34, else a ResNet-18."""
    names = {n.replace("_", ".") for n in names}
    if any(re.search(r"layer\d\.\d+\.conv3", n) for n in names):
        return "resnet50"
    return "resnet34" if any(re.search(r"(^|\.)layer3\.5\.", n) for n in names) else "resnet18"


def infer_backbone(state: dict[str, np.ndarray]) -> dict:
    """The backbone's model fields that a torch backbone state dict implies:
    {"stem": "imagenet" (7x7 conv1) | "cifar" (3x3 conv1, no max-pool), "width": conv1's
    output channels / 64}."""
    if "conv1.weight" not in state:
        raise ConfigError("The checkpoint has no 'conv1.weight': it is not a torchvision-"
                          f"layout ResNet (its first keys: {sorted(state)[:5]}).")
    kernel = state["conv1.weight"].shape
    if len(kernel) != 4 or kernel[-1] not in (3, 7):
        raise ConfigError(f"conv1.weight has shape {kernel}: bt_jax's stems have a 7x7 "
                          "(ImageNet) or 3x3 (CIFAR) first convolution.")
    return stem_and_width(kernel[-1], kernel[0])


def stem_and_width(kernel_size: int, channels: int) -> dict:
    """{"stem", "width"} of a ResNet whose conv1 is kernel_size x kernel_size with `channels`
    outputs: "imagenet" for 7x7, "cifar" (either CIFAR stem) for 3x3; width channels / 64."""
    return {"stem": "imagenet" if kernel_size == 7 else "cifar", "width": channels / 64}


def _template(arch: str, stem: str, width: float, projector_dims=(), *,
              nested: bool = False) -> dict:
    """Shapes of the variables of a backbone (+ projector): {(collection, *path, leaf):
    ShapeDtypeStruct}; nested: the backbone's paths under "backbone", as in BarlowTwins."""
    backbone = make_backbone(arch, stem=stem, width=width)
    size = 32 if stem == "imagenet" else 8
    shapes = jax.eval_shape(lambda: backbone.init(jax.random.key(0),
                                                  jnp.zeros((1, size, size, 3)), train=False))
    out = {(p[0], *(("backbone",) if nested else ()), *p[1:]): v
           for p, v in leaf_paths(shapes).items()}
    if projector_dims:
        proj = Projector(dims=tuple(projector_dims))
        shapes = jax.eval_shape(lambda: proj.init(
            jax.random.key(0), jnp.zeros((2, backbone.num_features)), train=False))
        out.update({(p[0], "projector", *p[1:]): v for p, v in leaf_paths(shapes).items()})
    return out


def _projector_dims(state: dict[str, np.ndarray]) -> tuple[int, ...]:
    """Widths of the Linear layers at projector.0, .3, .6, ... of a FAIR projector."""
    dims, i = [], 0
    while f"projector.{3 * i}.weight" in state:
        dims.append(int(state[f"projector.{3 * i}.weight"].shape[0]))
        i += 1
    return tuple(dims)


def _some(keys, most: int = 8) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - most} more" if len(keys) > most else ""
    return ", ".join(keys[:most]) + more


def _mismatch(what: str, missing, unexpected, shapes) -> Optional[str]:
    parts = []
    if missing:
        parts.append(f"missing keys: {_some(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {_some(unexpected)}")
    if shapes:
        parts.append("wrong shapes " + ", ".join(f"{k}: {got} (want {want})"
                                                 for k, got, want in shapes))
    return f"{what}: " + "; ".join(parts) if parts else None


def from_torch(checkpoint: dict, arch: str, *, projector: Optional[bool] = None,
               stem: Optional[str] = None) -> dict:
    """bt_jax variables {"params", "batch_stats"} of a PyTorch ResNet checkpoint.

    Args:
      checkpoint: a torchvision state dict, or FAIR's / solo-learn's checkpoint dict (module
        docstring); torch tensors or numpy arrays.
      arch: "resnet18" | "resnet34" | "resnet50".
      projector: None: the projector too where the checkpoint holds one; False: the backbone
        alone; True: the projector is required.
      stem: the backbone's stem; default inferred from conv1 ("cifar_pool" cannot be told
        from "cifar" by the weights: pass it).

    Returns:
      The backbone's variables (as `bt_jax.models.make_backbone(arch, stem=..., width=...)`
      takes them), or with a projector the BarlowTwins variables: {"params": {"backbone",
      "projector"}, "batch_stats": {...}}. `infer_backbone` gives the stem and width.

    Raises:
      ConfigError naming every missing, unexpected or misshapen key, or an unknown arch.
    """
    _check_arch(arch)
    state = unwrap(checkpoint)
    if any(k.startswith("backbone.") for k in state):   # FAIR's and solo-learn's training
        state = {k[len("backbone."):] if k.startswith("backbone.") else k: v
                 for k, v in state.items()}
    state = {k: v for k, v in state.items() if not any(p.search(k) for p in _DROPPED)}
    proj_keys = {k for k in state if k.startswith("projector.")}
    if projector is True and not proj_keys:
        raise ConfigError("projector=True, but the checkpoint holds no 'projector.*' keys.")
    with_projector = bool(proj_keys) and projector is not False
    biases = sorted(k for k in proj_keys if k.endswith(".bias")   # of Linears, not of BNs
                    and state.get(k[:-len("bias")] + "weight", np.zeros(())).ndim == 2)
    if not with_projector:
        state = {k: v for k, v in state.items() if k not in proj_keys}
    if with_projector and biases:
        raise ConfigError(
            f"The checkpoint's projector Linears have biases ({', '.join(biases)}), as "
            "solo-learn's do; bt_jax's projector (FAIR's) has none. Load the backbone alone "
            "with projector=False (python -m bt_jax.convert ... --no-projector).")
    fields = infer_backbone(state)
    template = _template(arch, stem or fields["stem"], fields["width"],
                         _projector_dims(state) if with_projector else (), nested=with_projector)
    flat, shapes = {}, []
    for path, spec in template.items():
        name = _torch_name(path[1:])
        if name in state:
            value = _from_torch_layout(path[-1], state[name]).astype(spec.dtype)
            if value.shape != spec.shape:
                shapes.append((name, state[name].shape,
                               _to_torch_layout(path[-1], np.broadcast_to(0, spec.shape)).shape))
            flat[path] = value
    names = {_torch_name(p[1:]) for p in template}
    error = _mismatch(f"The checkpoint does not fit bt_jax's {arch} (stem "
                      f"{stem or fields['stem']!r}, width {fields['width']:g})",
                      names - set(state), set(state) - names, shapes)
    if error:
        raise ConfigError(error + ". Check --arch, or convert a ResNet in torchvision's layout.")
    return _nest(flat)


def to_torch(variables: dict, arch: str, *, projector: bool = False) -> dict[str, np.ndarray]:
    """A torchvision state dict {name: numpy array} of bt_jax variables.

    variables: a backbone's {"params", "batch_stats"}, or BarlowTwins variables (params
    under "backbone" and "projector"). With projector=True the projector's weights follow
    as FAIR names them ("projector.0.weight", ...). Every BatchNorm gets a
    `num_batches_tracked` of 0, so `torchvision.models.<arch>().load_state_dict(state,
    strict=False)` misses only `fc.*`.

    Raises:
      ConfigError where the variables are not those of `arch`.
    """
    _check_arch(arch)
    flat = {}
    for (collection, *path), value in leaf_paths(variables).items():
        if path[0] == "backbone":
            path = path[1:]
        elif path[0] in ("projector", "predictor") and "backbone" in variables["params"]:
            if path[0] == "predictor" or not projector:
                continue
        flat[(collection, *path)] = np.asarray(value)
    conv1 = flat.get(("params", "conv1", "kernel"))
    if conv1 is None or conv1.ndim != 4:
        raise ConfigError("The variables hold no backbone 'conv1' kernel: pass a backbone's "
                          "{'params', 'batch_stats'} or BarlowTwins variables.")
    fields = stem_and_width(conv1.shape[0], conv1.shape[-1])   # HWIO
    stem, width = fields["stem"], fields["width"]
    dims = tuple(flat[k].shape[-1] for k in sorted(
        (k for k in flat if k[1] == "projector" and k[-1] == "kernel"),
        key=lambda k: int(k[2][len("linear"):])))
    want = {k: v.shape for k, v in _template(arch, stem, width, dims).items()}
    error = _mismatch(
        f"The variables are not bt_jax's {arch} (stem {stem!r}, width {width:g})",
        {_torch_name(k[1:]) for k in set(want) - set(flat)},
        {_torch_name(k[1:]) for k in set(flat) - set(want)},
        [(_torch_name(k[1:]), flat[k].shape, want[k]) for k in want
         if k in flat and flat[k].shape != want[k]])
    if error:
        raise ConfigError(error + ".")
    out = {}
    for path in sorted(flat, key=lambda k: _torch_name(k[1:])):
        name = _torch_name(path[1:])
        out[name] = _to_torch_layout(path[-1], flat[path])
        if path[-1] == "var":
            out[name[:-len("running_var")] + "num_batches_tracked"] = np.zeros((), np.int64)
    return out
