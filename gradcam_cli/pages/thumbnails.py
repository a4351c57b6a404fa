"""Small JPEGs of the overlays, for the pages' cards: a page of a few hundred cards stays light.

A run writes `KEY.INDEX-LABEL.LAYER.thumb.jpg` next to each overlay from the picture it has in
memory (`save_thumbnail`); a page writer makes those missing from the overlay files on disk.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ..files import resolve_inside, write_image_atomic

__all__ = ["THUMBNAIL_SIZE", "thumbnail_path", "shrunk", "read_shrunk", "save_thumbnail"]

THUMBNAIL_SIZE = 256  # longest side, pixels: sharp in a ~240-pixel card
THUMBNAIL_SUFFIX = ".thumb.jpg"
_OVERLAY_SUFFIXES = (".overlay.png", ".overlay.jpg")
UNREADABLE = (OSError, ValueError, Image.DecompressionBombError)


def thumbnail_path(overlay: str) -> str:
    """`a/cat.281-tabby.layer4.overlay.png` → `a/cat.281-tabby.layer4.thumb.jpg`."""
    for suffix in _OVERLAY_SUFFIXES:
        if overlay.endswith(suffix):
            return overlay[: -len(suffix)] + THUMBNAIL_SUFFIX
    return overlay + THUMBNAIL_SUFFIX


def shrunk(picture: Image.Image) -> Image.Image:
    """An RGB copy at most THUMBNAIL_SIZE a side (the caller's picture is left as it is)."""
    small = picture.convert("RGB")
    small.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.LANCZOS)
    return small


def read_shrunk(path: Path) -> Image.Image:
    """The picture in `path`, shrunk (a JPEG is decoded reduced); raises one of UNREADABLE."""
    with Image.open(path) as picture:
        picture.draft("RGB", (THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        return shrunk(picture)


def save_thumbnail(out_dir: Path, overlay: str, picture: Image.Image) -> str:
    """Write the thumbnail of an overlay (JPEG, at most THUMBNAIL_SIZE a side); its path."""
    path = thumbnail_path(overlay)
    write_image_atomic(resolve_inside(out_dir, path), shrunk(picture), "jpg")
    return path
