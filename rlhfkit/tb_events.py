"""TensorBoard event files written directly: scalars and text, which is all a run logs.

torch's ``SummaryWriter`` imports the ``tensorboard`` package (its protobuf messages, a TensorFlow stub, every
summary plugin) and starts a writer thread, in every stage process (``bench/import_costs.py``). The file
format is small enough to write by hand: a sequence of records, each ``[length: uint64][masked CRC-32C of
the length: uint32][data][masked CRC-32C of the data: uint32]``, whose data is a serialized ``Event`` protocol
buffer (tensorflow/core/util/event.proto): ``wall_time`` (field 1, double), ``step`` (2, int64),
``file_version`` (3, string), ``summary`` (5) holding ``Summary.Value``s with ``tag`` (1), ``simple_value``
(2, float), or ``metadata`` (9) and ``tensor`` (8) for text (the layout of ``SummaryWriter.add_text``).
tests/test_startup.py reads the files back with TensorBoard's own reader.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1  # Castagnoli polynomial, reflected
        table.append(c)
    return table


_TABLE = _crc32c_table()


def masked_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1  # negative int64s as two's complement, as protobuf writes them
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(step: int | None, *, file_version: str | None = None, values: list[bytes] = ()) -> bytes:
    out = b"\x09" + struct.pack("<d", time.time())  # wall_time: field 1, 64-bit
    if step is not None:
        out += b"\x10" + _varint(step)  # step: field 2, varint
    if file_version is not None:
        out += _field(3, file_version.encode())
    if values:
        out += _field(5, b"".join(_field(1, v) for v in values))  # summary { value ... }
    return out


def scalar_value(tag: str, value: float) -> bytes:
    return _field(1, tag.encode()) + b"\x15" + struct.pack("<f", value)  # simple_value: field 2, 32-bit


def text_value(tag: str, text: str) -> bytes:
    """What ``SummaryWriter.add_text`` writes: the text plugin's metadata and a 1-element string tensor."""
    metadata = _field(1, _field(1, b"text") + _field(2, b""))  # plugin_data { plugin_name, content }
    shape = _field(2, _field(2, b"\x08\x01"))  # tensor_shape { dim { size: 1 } }
    tensor = b"\x08\x07" + shape + _field(8, text.encode())  # dtype DT_STRING (7), string_val
    return _field(1, f"{tag}/text_summary".encode()) + _field(9, metadata) + _field(8, tensor)


class EventFileWriter:
    """One ``events.out.tfevents.*`` file in ``folder``, flushed after every event."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.0"
        self.file = (folder / name).open("ab")
        self._write(_event(None, file_version="brain.Event:2"))

    def _write(self, data: bytes) -> None:
        header = struct.pack("<Q", len(data))
        self.file.write(header + struct.pack("<I", masked_crc32c(header)) + data)
        self.file.write(struct.pack("<I", masked_crc32c(data)))
        self.file.flush()

    def scalars(self, step: int, metrics: dict[str, float]) -> None:
        self._write(_event(step, values=[scalar_value(k, float(v)) for k, v in metrics.items()]))

    def text(self, step: int, tag: str, text: str) -> None:
        self._write(_event(step, values=[text_value(tag, text)]))

    def close(self) -> None:
        self.file.close()
