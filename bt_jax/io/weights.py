"""Weights files of any format, read and written: what `python -m bt_jax.convert`,
`model.init_from` and `python -m bt_jax.evaluate --backbone` read.

The format of each file is chosen by its extension:
- .pth / .pt / .ckpt: a torch.save'd state dict, or FAIR's / solo-learn's checkpoint (needs
  torch; read with weights_only=True, so tensors and plain containers only);
- .safetensors: a flat {torchvision name: tensor} file (needs no torch);
- .msgpack: bt_jax's backbone.msgpack format, the backbone's {"params", "batch_stats"}
  (what a run exports; `flax.serialization.msgpack_restore` reads it).
The name mapping is `bt_jax.io.interop`'s.
"""
from __future__ import annotations

import io
import json
import os
import struct
from typing import Optional

import flax.serialization
import numpy as np

from bt_jax.errors import ConfigError
from bt_jax.io import interop, run_dir, storage

FORMATS = (".pth", ".pt", ".ckpt", ".safetensors", ".msgpack")
# safetensors' dtype names (https://github.com/huggingface/safetensors, the format's spec)
_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
              "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def file_format(path: str) -> str:
    """The format of a weights file by its extension (.pt and .ckpt read as .pth);
    ConfigError for any other."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise ConfigError(f"{path!r}: unknown format {ext or '(no extension)'!r}; use one of "
                          f"{FORMATS}.")
    return ".pth" if ext in (".pt", ".ckpt") else ext


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """{name: array} of a .safetensors file: a little-endian u64 header length, a JSON
    header {name: {"dtype", "shape", "data_offsets"}}, then the tensors' bytes."""
    data = storage.read_bytes(path)
    try:
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + length])
    except (struct.error, ValueError, UnicodeDecodeError):
        raise ConfigError(f"{path!r} is not a safetensors file (no readable header).") from None
    base, out = 8 + length, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _ST_DTYPES:
            raise ConfigError(f"{path!r}: tensor {name!r} has dtype {info['dtype']}, which "
                              f"bt_jax does not read ({sorted(_ST_DTYPES)}).")
        begin, end = info["data_offsets"]
        out[name] = np.frombuffer(data[base + begin:base + end],
                                  _ST_DTYPES[info["dtype"]]).reshape(tuple(info["shape"])).copy()
    return out


def write_safetensors(path: str, tensors: dict[str, np.ndarray]) -> None:
    """Writes {name: array} as a .safetensors file (header padded to 8 bytes)."""
    names = {np.dtype(v).name: k for k, v in _ST_DTYPES.items()}
    header, chunks, offset = {}, [], 0
    for name, value in tensors.items():
        value = np.asarray(value, order="C")   # (ascontiguousarray makes 0-d arrays 1-d)
        raw = value.tobytes()
        header[name] = {"dtype": names[value.dtype.name], "shape": list(value.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    run_dir.atomic_write(path, struct.pack("<Q", len(text)) + text + b"".join(chunks))


def _torch(needed_for: str):
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise ConfigError(f"{needed_for} needs PyTorch (pip install torch); .safetensors and "
                          ".msgpack files need no torch.") from None
    return torch


def read_torch_file(path: str) -> dict:
    """The checkpoint dict of a .pth / .pt / .safetensors file (tensors as numpy)."""
    if not storage.isfile(path):
        raise ConfigError(f"{path!r} does not exist.")
    if file_format(path) == ".safetensors":
        return read_safetensors(path)
    torch = _torch(f"Reading {path!r}")
    try:
        return torch.load(io.BytesIO(storage.read_bytes(path)), map_location="cpu",
                          weights_only=True)
    except Exception as e:   # torch raises many kinds for a file that is not a checkpoint
        raise ConfigError(f"{path!r} is not a readable PyTorch checkpoint "
                          f"({type(e).__name__}: {str(e).splitlines()[0]}).") from None


def read_variables(path: str, arch: Optional[str] = None, *, projector: Optional[bool] = None,
                   stem: Optional[str] = None) -> tuple[dict, str]:
    """(bt_jax variables, arch) of a weights file of any of FORMATS; arch inferred from the
    weights when None. A .msgpack file holds a backbone's variables."""
    if not storage.isfile(path):
        raise ConfigError(f"{path!r} does not exist.")
    if file_format(path) == ".msgpack":
        try:
            variables = flax.serialization.msgpack_restore(storage.read_bytes(path))
        except Exception:   # msgpack's errors share no base class
            raise ConfigError(f"{path!r} is not a msgpack file.") from None
        if not isinstance(variables, dict) or "params" not in variables:
            raise ConfigError(f"{path!r} holds no {{'params', 'batch_stats'}} variables.")
        names = {".".join(k[1:]) for k in interop.leaf_paths(variables)}
        arch = arch or interop.infer_arch(names)
        interop.to_torch(variables, arch)   # the same checks as a conversion
        return variables, arch
    state = read_torch_file(path)
    arch = arch or interop.infer_arch(interop.unwrap(state))
    return interop.from_torch(state, arch, projector=projector, stem=stem), arch


def backbone_of(variables: dict) -> dict:
    """The backbone's {"params", "batch_stats"} of backbone or BarlowTwins variables."""
    if "backbone" not in variables["params"]:
        return variables
    return {"params": variables["params"]["backbone"],
            "batch_stats": variables.get("batch_stats", {}).get("backbone", {})}


def model_fields(variables: dict, arch: str) -> dict:
    """{"backbone": arch, "stem", "width"}: the config.model fields the weights imply
    ("cifar" stands for both CIFAR stems, which have the same weights)."""
    kernel = np.shape(backbone_of(variables)["params"]["conv1"]["kernel"])   # [kh, kw, 3, C]
    return {"backbone": arch, **interop.stem_and_width(kernel[0], kernel[-1])}


def fits(name: str, have, value) -> bool:
    """Whether config.model.<name> = have holds weights whose field is `value` (a "cifar"
    stem's weights fit both CIFAR stems)."""
    if name == "stem" and value == "cifar":
        return have in ("cifar", "cifar_pool")
    return have == value


def mismatched_fields(model_config, fields: dict) -> list[str]:
    """["model.width: 0.5 (weights: 1)", ...]: where config.model cannot hold the weights."""
    return [f"model.{name}: {model_config[name]!r} (weights: {value!r})"
            for name, value in fields.items() if not fits(name, model_config[name], value)]


def write_variables(path: str, variables: dict, arch: str, *, projector: bool = True) -> None:
    """Writes bt_jax variables to a weights file of any of FORMATS (module docstring)."""
    fmt = file_format(path)
    if fmt == ".msgpack":
        run_dir.atomic_write(path, flax.serialization.to_bytes(backbone_of(variables)))
        return
    state = interop.to_torch(variables, arch, projector=projector)
    if fmt == ".safetensors":
        write_safetensors(path, state)
        return
    torch = _torch(f"Writing {path!r}")
    buffer = io.BytesIO()
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, buffer)
    run_dir.atomic_write(path, buffer.getvalue())
