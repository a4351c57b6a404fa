"""Why an image could not be decoded, in one line a user can act on."""

from __future__ import annotations

import errno
import re
from pathlib import Path

from PIL import Image, PngImagePlugin, TiffImagePlugin, UnidentifiedImageError

from ..files import os_reason
from .filekinds import MISSING, NotRegularFile, open_regular


def decode_reason(exc: BaseException, path: Path) -> str:
    """One line saying why decoding failed, in words a user can act on."""
    detail = _one_line(exc)
    if isinstance(exc, NotRegularFile):
        return detail
    if isinstance(exc, Image.DecompressionBombError):
        pixels = re.search(r"(\d+) pixels", detail)
        size = f"{int(pixels.group(1)):,} pixels" if pixels else "too many pixels"
        limit = Image.MAX_IMAGE_PIXELS or 0
        return (
            f"image too large: {size}, over the {limit:,}-pixel limit (decompression bomb "
            "guard); downscale it below that to explain it"
        )
    if isinstance(exc, FileNotFoundError):
        return MISSING
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        return "too many levels of symbolic links (a symlink loop)"
    if isinstance(exc, UnidentifiedImageError):
        return _unidentified_reason(path)
    if isinstance(exc, MemoryError):
        return "not enough memory to decode it"
    if isinstance(exc, ValueError) and "MAX_TEXT_" in detail:
        return _png_text_reason(detail)
    if "truncated" in detail.lower() or isinstance(exc, EOFError):
        return f"truncated ({detail or 'file ends early'})"
    if isinstance(exc, OSError) and exc.strerror and not detail.startswith("broken"):
        return os_reason(exc)
    return f"damaged or unsupported image ({detail or type(exc).__name__})"


_HEAD_BYTES = 512


def _one_line(exc: BaseException) -> str:
    """The message on one line, whatever the plugin put in it; chunk names without b'...'."""
    return re.sub(r"\bb'(\w+)'", r"\1", " ".join(str(exc).split()))


def _unidentified_reason(path: Path) -> str:
    """Why Pillow could not even tell the format: say what the file is instead."""
    try:
        with open_regular(path) as handle:
            head = handle.read(_HEAD_BYTES)
    except OSError:
        head = b"?"
    if not head:
        return "empty file (0 bytes)"
    damaged = _plugin_complaint(path, head)
    if damaged:
        return damaged
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"<!doctype html") or b"<html" in text:
        return "an HTML page, not an image"
    if text.startswith(b"<?xml") or b"<svg" in text:
        return "an XML/SVG document, not a bitmap image (convert it to PNG first)"
    if _looks_like_text(head):
        return "a text file, not an image"
    return "not an image format Pillow can decode (unknown file signature)"


def _plugin_complaint(path: Path, head: bytes) -> str | None:
    """A plugin that recognises the signature but rejects the header: its reason.

    Image.open hides these ("cannot identify image file"), yet they name the damage:
    "broken PNG file (bad header checksum in b'IHDR')".
    """
    for image_format in Image.ID:
        factory, accept = Image.OPEN[image_format]
        if accept is None:  # plugins that accept anything tell nothing
            continue
        try:
            recognised = bool(accept(head[:16]))
        except Exception:  # some accept() functions fail on short input
            recognised = False
        if not recognised:
            continue
        try:
            with open_regular(path) as handle:
                factory(handle, str(path)).close()
        except Exception as exc:
            detail = _one_line(exc)
            if detail == "unknown pixel mode":  # a valid header Pillow has no decoder for
                return _unsupported_mode_reason(image_format, path)
            return f"damaged {image_format} header ({detail or type(exc).__name__})"
        return None
    return None


def _png_text_reason(detail: str) -> str:
    """PngImagePlugin refuses text and ICC chunks past its limits, against zlib bombs."""
    if "MAX_TEXT_MEMORY" in detail:
        limit = f"PngImagePlugin.MAX_TEXT_MEMORY, {_megabytes(PngImagePlugin.MAX_TEXT_MEMORY)}"
        what = "its text chunks add up to more than"
    else:
        limit = f"PngImagePlugin.MAX_TEXT_CHUNK, {_megabytes(PngImagePlugin.MAX_TEXT_CHUNK)}"
        what = "a text or ICC-profile chunk larger than"
    return (
        f"unsupported PNG: {what} Pillow's safety limit ({limit} decompressed); "
        "save it again without metadata to explain it"
    )


def _megabytes(size: int) -> str:
    return f"{size / 2**20:g} MB"


_PHOTOMETRIC = {0: "white is zero", 1: "black is zero", 2: "RGB", 3: "palette", 5: "CMYK"}


def _unsupported_mode_reason(image_format: str, path: Path) -> str:
    """Why Pillow has no mode for a well-formed file: for a TIFF, its channels and bits."""
    generic = f"unsupported {image_format}: a pixel layout Pillow cannot decode"
    if image_format != "TIFF":
        return f"{generic}; save it as RGB or RGBA to explain it"
    try:
        samples, bits, photometric = _tiff_layout(path)
    except Exception:  # the layout is only for the message
        return f"{generic}; save it as RGB or RGBA to explain it"
    depth = f"{bits[0]} bits" if len(set(bits)) == 1 else f"{', '.join(map(str, bits))} bits"
    if samples > 4:
        return (
            f"unsupported TIFF: {samples} channels (samples per pixel) of {depth}; "
            "save it as RGB or RGBA to explain it"
        )
    kind = _photometric_name(photometric)
    channels = "1 channel" if samples == 1 else f"{samples} channels"
    return f"{generic} ({channels} of {depth}, {kind}); save it as 8-bit RGB, RGBA or grey"


def _photometric_name(photometric: int | None) -> str:
    """'RGB', 'palette', ...; a TIFF may lack the tag (readers then assume 'white is zero')."""
    if photometric is None:
        return "no photometric tag"
    return _PHOTOMETRIC.get(photometric, f"photometric {photometric}")


def _tiff_layout(path: Path) -> tuple[int, tuple[int, ...], int | None]:
    """(samples per pixel, bits per sample, photometric) from the first IFD of a TIFF."""
    with open_regular(path) as handle:
        header = handle.read(8)
        if header[2:3] == b"+":  # BigTIFF: a 16-byte header
            header += handle.read(8)
        directory = TiffImagePlugin.ImageFileDirectory_v2(header)
        handle.seek(directory.next)
        directory.load(handle)
    samples = int(directory.get(277, 1))
    bits = directory.get(258, (1,))
    bits = tuple(int(b) for b in (bits if isinstance(bits, tuple) else (bits,))) or (1,)
    photometric = directory.get(262)
    return samples, bits, None if photometric is None else int(photometric)


def _looks_like_text(head: bytes) -> bool:
    for cut in range(4):  # the read may end inside a multi-byte character
        try:
            decoded = head[: len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        return bool(decoded) and all(ch.isprintable() or ch in "\t\r\n" for ch in decoded)
    return False
