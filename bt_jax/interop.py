"""torchvision-named state dicts <-> bt_jax variables: the public name of
`bt_jax.io.interop` (DESIGN's contract: `from bt_jax.interop import from_torch, to_torch`)."""
from bt_jax.io.interop import (ARCHS, from_torch, infer_arch, infer_backbone, leaf_paths,  # noqa: F401
                               stem_and_width, to_torch, unwrap)

__all__ = ["ARCHS", "from_torch", "infer_arch", "infer_backbone", "leaf_paths",
           "stem_and_width", "to_torch", "unwrap"]
