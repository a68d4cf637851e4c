"""TensorBoard event files without TensorFlow.

The `tensorboard` package ships the event-file writer and the Summary protos; TensorFlow is
not needed to write scalars and images that TensorBoard reads. Where `tensorboard` is not
installed, `create` returns None after one warning line and the run goes on without events
(metrics.jsonl holds the same numbers).
"""
from __future__ import annotations

import os
import socket
import struct
import sys
import time
import zlib
from typing import Optional

import numpy as np

from bt_jax.io import storage


def encode_png(image: np.ndarray) -> bytes:
    """uint8 [H, W, 3] (or [H, W, 1], [H, W]) -> PNG bytes (8-bit RGB or grey, no filter).

    PNG (ISO/IEC 15948): the signature, IHDR, one zlib-compressed IDAT of the scanlines
    (each preceded by filter type 0), IEND; every chunk is length, type, data, CRC-32.
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (
            image.ndim == 3 and image.shape[-1] != 3):
        raise ValueError(f"encode_png takes uint8 [H, W, 3] or [H, W]; got {image.dtype} "
                         f"{image.shape}.")
    height, width = image.shape[:2]
    colour_type = 2 if image.ndim == 3 else 0

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    rows = image.reshape(height, -1)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


class EventWriter:
    """Scalars and images into a TensorBoard events file in `logdir`.

    The same three methods as clu's metric writers: write_scalars(step, {name: number}),
    write_images(step, {name: uint8 [N, H, W, 3]}) (the first image of each), flush().
    """

    def __init__(self, logdir: str):
        from tensorboard.compat.proto import summary_pb2  # pylint: disable=import-outside-toplevel
        from tensorboard.summary.writer.event_file_writer import (  # pylint: disable=import-outside-toplevel
            EventFileWriter)
        from bt_jax.data import quiet_tensorflow_start  # pylint: disable=import-outside-toplevel
        self._summary_pb2 = summary_pb2
        if storage.is_remote(logdir):   # through bt_jax.io.storage, as every file of the run
            self._writer = _ObjectEventFile(logdir)
            return
        # tensorboard loads TensorFlow here where it is installed (for tf.io.gfile's
        # remote file systems), and TF's native libraries announce themselves on stderr.
        with quiet_tensorflow_start():
            self._writer = EventFileWriter(logdir)

    def _add(self, step: int, values: list) -> None:
        from tensorboard.compat.proto import event_pb2  # pylint: disable=import-outside-toplevel
        summary = self._summary_pb2.Summary(value=values)
        self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                               summary=summary))

    def restart_at(self, step: int) -> None:
        """Marks a resume from `step`: TensorBoard drops the points an earlier launch wrote
        after it (a SessionLog START event; its reader purges such orphaned data)."""
        from tensorboard.compat.proto import event_pb2  # pylint: disable=import-outside-toplevel
        self._writer.add_event(event_pb2.Event(
            wall_time=time.time(), step=int(step),
            session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

    def write_scalars(self, step: int, scalars: dict) -> None:
        value = self._summary_pb2.Summary.Value
        self._add(step, [value(tag=name, simple_value=float(v)) for name, v in scalars.items()])

    def write_images(self, step: int, images: dict) -> None:
        values = []
        for name, batch in images.items():
            image = np.asarray(batch)[0]
            png = encode_png(image)
            values.append(self._summary_pb2.Summary.Value(
                tag=name, image=self._summary_pb2.Summary.Image(
                    height=image.shape[0], width=image.shape[1],
                    colorspace=3 if image.ndim == 3 and image.shape[-1] == 3 else 1,
                    encoded_image_string=png)))
        self._add(step, values)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class _ObjectEventFile:
    """An events file on an object store: the records (TensorBoard's RecordWriter framing)
    held in memory and the whole object written again at each flush (an object store has
    no append). The same add_event / flush / close as tensorboard's EventFileWriter."""

    def __init__(self, logdir: str):
        from tensorboard.compat.proto import event_pb2  # pylint: disable=import-outside-toplevel
        from tensorboard.summary.writer.record_writer import (  # pylint: disable=import-outside-toplevel
            RecordWriter)
        self.path = storage.join(logdir, f"events.out.tfevents.{int(time.time()):010d}."
                                         f"{socket.gethostname()}.{os.getpid()}")
        self._data = bytearray()
        self._records = RecordWriter(self)
        self.add_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
        self.flush()

    def write(self, record: bytes) -> None:   # RecordWriter's file-like side
        self._data += record

    def add_event(self, event) -> None:
        self._records.write(event.SerializeToString())

    def flush(self) -> None:
        storage.write_atomic(self.path, bytes(self._data))

    def close(self) -> None:
        self.flush()


def create(logdir: str) -> Optional[EventWriter]:
    """An `EventWriter` for logdir, or None (with one line on stderr) where the
    `tensorboard` package is missing."""
    try:
        return EventWriter(logdir)
    except ImportError:
        print("warning: the tensorboard package is not installed: no TensorBoard events "
              "(metrics.jsonl has the same numbers). pip install tensorboard to get them.",
              file=sys.stderr, flush=True)
        return None
