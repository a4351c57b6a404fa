"""Files that are not what their names say, for the hostile-input tests (issue 14): a Unix
socket, a PNG with an oversized chunk, TIFFs of any channel count."""

from __future__ import annotations

import contextlib
import io
import socket
import struct
import zlib
from pathlib import Path

from PIL import Image


def bound_socket(path: Path) -> None:
    """A Unix socket file at `path`; it stays after the socket is closed. Bound from inside
    its folder: socket paths are limited to about 100 bytes."""
    with contextlib.chdir(path.parent), socket.socket(socket.AF_UNIX) as sock:
        sock.bind(path.name)


def png_with_chunk(kind: bytes, body: bytes) -> bytes:
    """A small valid PNG with one more chunk right after IHDR."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(buffer, format="PNG")
    png = buffer.getvalue()
    crc = struct.pack(">I", zlib.crc32(kind + body))
    return png[:33] + struct.pack(">I", len(body)) + kind + body + crc + png[33:]


def iccp_bomb() -> bytes:
    """An ICC profile of 2 MB of zeros, a few kB compressed: over Pillow's 1 MB text limit."""
    return png_with_chunk(b"iCCP", b"icc\0\0" + zlib.compress(bytes(2 * 2**20), 9))


def tiff_with_samples(samples: int, grey: bool = True, width: int = 8, height: int = 8) -> bytes:
    """An uncompressed little-endian TIFF of `samples` 8-bit channels: grey or RGB, the rest
    "unspecified" extra samples, the layout tifffile writes for a multispectral [H, W, C] array."""
    data = bytes(width * height * samples)
    extra = samples - (1 if grey else 3)
    entries = [  # tag, type (3 short, 4 long), count, value or offset
        (256, 3, 1, width),
        (257, 3, 1, height),
        (258, 3, 1, 8),  # bits per sample (one value for all)
        (259, 3, 1, 1),  # no compression
        (262, 3, 1, 1 if grey else 2),  # photometric: min-is-black or RGB
        (273, 4, 1, 0),  # strip offset, set below
        (277, 3, 1, samples),
        (278, 3, 1, height),
        (279, 4, 1, len(data)),
        (284, 3, 1, 1),
    ]
    if extra > 0:
        entries.append((338, 3, extra, 0))  # extra samples, all 0 ("unspecified")
    outside = 2 * extra if extra > 2 else 0  # more than two shorts: stored after the IFD
    ifd_end = 8 + 2 + 12 * len(entries) + 4
    out = b"II*\0" + struct.pack("<IH", 8, len(entries))
    for tag, kind, count, value in entries:
        if tag == 273:
            value = ifd_end + outside
        elif tag == 338 and outside:
            value = ifd_end
        short = kind == 3 and count <= 2 and not (tag == 338 and outside)
        packed = struct.pack("<HH", value, 0) if short else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, count) + packed
    return out + b"\0\0\0\0" + bytes(outside) + data
