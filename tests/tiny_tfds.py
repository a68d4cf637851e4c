"""A real (not mocked) TFDS dataset for the streaming tests, built offline in a temp dir.

"bt_tiny_images": variable-size RGB JPEGs in several record files per split; "train" (40
examples, 3 classes), "test" (10) and "unlabelled" (24, label -1 as in STL-10). Every
image's top-left pixel encodes its example key, so a test can recognise an example.
"""
import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

NAME = "bt_tiny_images"
SIZES = {"train": 40, "test": 10, "unlabelled": 24}


def _jpeg(key: int, h: int, w: int) -> bytes:
    rng = np.random.default_rng(key)
    image = rng.integers(0, 256, (h, w, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=95)
    return buf.getvalue()


class BtTinyImages(tfds.core.GeneratorBasedBuilder):
    """See the module docstring."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(num_classes=3),
            "key": tfds.features.Scalar(np.int64)}))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {name: self._generate_examples(name) for name in SIZES}

    def _generate_examples(self, split):
        base = {"train": 0, "test": 1000, "unlabelled": 2000}[split]
        for i in range(SIZES[split]):
            key = base + i
            label = -1 if split == "unlabelled" else i % 3
            yield key, {"image": _jpeg(key, 24 + i % 9, 30 + i % 5), "label": label,
                        "key": key}


def build(data_dir: str) -> None:
    """Writes the dataset under data_dir (4 record files per split)."""
    builder = BtTinyImages(data_dir=data_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(num_shards=4))
