"""The batch layout: what one pipeline batch holds, which data.augment_on and the
pretraining split decide. The one statement of it: the input pipeline yields batches in
it, the trainer builds the on-device augmentation for it, and the planner compiles the
step for its shapes. No TensorFlow here.

Every array has leading dimension B (a process's share of the global batch):
- "views" (augment_on="host"): {"view_a", "view_b": float32 [B, S, S, 3] normalised
  views, "index", "label": int32 [B]}; the step trains on them as they are.
- "images" (augment_on="device", an in-memory split): {"image": uint8 [B, H, W, C],
  "index", "label", "epoch": int32 [B]}; the device crops and augments
  (`device_augment.make_view_fn`). The host only gathers rows by index: no TensorFlow.
- "crops" (augment_on="device", a streamed split: files, TFDS): {"crop_a", "crop_b":
  uint8 [B, S, S, 3] decoded and cropped on the host, "index", "label", "epoch"}; the
  device does the rest.
"""
from __future__ import annotations

import dataclasses

from bt_jax.errors import ConfigError

AUGMENT_ON = ("host", "device")
VIEWS = ("view_a", "view_b")        # what the train step consumes
IMAGE = "image"                     # uncropped in-memory images, for on-device views
CROPS = ("crop_a", "crop_b")        # host crops of streamed images, for on-device views
_LABELS = ("index", "label")


@dataclasses.dataclass(frozen=True)
class BatchLayout:
    """One of the three layouts of the module docstring ("views", "images", "crops")."""
    kind: str

    @property
    def keys(self) -> tuple[str, ...]:
        """The batch's keys, in a fixed order."""
        if self.kind == "views":
            return VIEWS + _LABELS
        return ((IMAGE,) if self.kind == "images" else CROPS) + _LABELS + ("epoch",)

    @property
    def views_on_device(self) -> bool:
        """Whether the device makes the views (an augmentation program runs before the
        step) rather than receiving them."""
        return self.kind != "views"

    @property
    def host_uses_tensorflow(self) -> bool:
        """Whether the host's part runs in tf.data (decoding, cropping or augmenting); the
        "images" layout is gathered in NumPy."""
        return self.kind != "images"

    def shapes(self, batch: int, image_size: int,
               channels: int = 3) -> dict[str, tuple[tuple[int, ...], str]]:
        """{key: (shape, dtype name)} of a batch of `batch` rows: what the train step (or
        the augmentation ahead of it) receives. channels: C of an in-memory split's
        stored images (1 for grayscale sources), which only "images" keeps."""
        view = (batch, image_size, image_size, 3)
        shapes = {"index": ((batch,), "int32"), "label": ((batch,), "int32"),
                  "epoch": ((batch,), "int32"), IMAGE: ((*view[:3], channels), "uint8")}
        shapes.update({k: (view, "float32") for k in VIEWS})
        shapes.update({k: (view, "uint8") for k in CROPS})
        return {k: shapes[k] for k in self.keys}


def batch_layout(augment_on: str, gather_on_host: bool) -> BatchLayout:
    """The layout for data.augment_on and a split that is (gather_on_host: an in-memory
    array) or is not (files, TFDS) gathered by index on the host."""
    if augment_on not in AUGMENT_ON:
        raise ConfigError(f"data.augment_on must be one of {AUGMENT_ON}; got {augment_on!r}.")
    if augment_on == "host":
        return BatchLayout("views")
    return BatchLayout("images" if gather_on_host else "crops")
