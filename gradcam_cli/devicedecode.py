"""JPEGs decoded and preprocessed on the model's device: on a GPU, the CPU only reads files.

    file bytes ──▶ torchvision.io.decode_jpeg(list, device)  (nvjpeg on CUDA, batched)
               ──▶ resize, crop or pad, normalise with torch ops  (the geometry of Preprocess)

`DeviceDecoder` is what `pipeline.decode_batches` runs on its decode thread when a run decodes
on the device (`--decode device`, or `auto` on a CUDA GPU: `decode_device`). It gives each input
the `Decoded` that the Pillow path would give, with the model's view (`array`) and the photo
(`pixels`) left on the device and the photo also on the host (`image`, for everything drawn on
the CPU). Anything it cannot do exactly as the Pillow path does is handed, file by file, to that
path (`pipeline._decode_batch`, in the decode processes when there are some): files that are no
plain 8-bit YCbCr JPEG (PNG, grayscale, CMYK, Adobe or RGB-coded JPEGs, multi-picture MPO),
an EXIF orientation other than 1, a header that warns, a photo over the pixel limit or whose
resized picture would exceed the budget (`preprocess.py`), and any file the device decoder
rejects (truncated, damaged). So errors, warnings and refusals are the Pillow path's, word for
word.

Pixels: torchvision's CPU decoder is the libjpeg-turbo Pillow uses, and gives the very same
photo; nvjpeg's IDCT and chroma upsampling may differ by a level or so. The resize is Pillow's
(antialiased filters, bicubic a = -0.5) done as its two passes with 8-bit rounding between, so
the model's input matches Pillow's to a level here and there (tests/test_devicedecode.py
measures it); nearest takes the very rows and columns Pillow takes.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TypeGuard

import numpy as np
import torch
from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile

from .errors import UsageError
from .inputs import InputItem, open_regular, recorded_warnings, refuse_over_pixel_limit
from .pipeline import Decoded, _decode_batch, check_decode
from .preprocess import RESAMPLING, WHOLE_RESIZE_PIXELS, Preprocess

__all__ = ["DeviceDecoder", "decode_device", "device_decode_refusal", "model_views"]

_SOI = b"\xff\xd8\xff"  # start of image, and the first marker's lead byte
_ORIENTATION = 0x0112
_RGB_COMPONENT_IDS = [ord("R"), ord("G"), ord("B")]  # components coded as RGB, not YCbCr


def decode_device(mode: str, device: torch.device) -> torch.device | None:
    """Where a run decodes its JPEGs for `decode=` mode: `device`, or None for Pillow on the CPU.

    auto: the device when it is a CUDA GPU that torchvision's decoder works on; device: always
    (where torchvision cannot decode on it, as on the CPU or MPS, its CPU decoder feeds it).
    """
    check_decode(mode)
    if mode == "cpu":
        return None
    if mode == "auto":
        return device if device.type == "cuda" and _decodes_on(device) else None
    if _decoder() is None:
        raise UsageError(
            "decode='device' needs torchvision.io.decode_jpeg, which this torchvision lacks; "
            "use decode='cpu'"
        )
    return device


def _decoder():
    """torchvision.io.decode_jpeg, or None where torchvision has none (it is deprecated there
    since 0.29, in favour of TorchCodec)."""
    try:
        from torchvision.io import decode_jpeg
    except ImportError:
        return None
    return decode_jpeg


@functools.lru_cache(maxsize=8)
def _decodes_on(device: torch.device) -> bool:
    """Whether torchvision decodes a JPEG on `device` (nvjpeg on CUDA): tried on a tiny one."""
    decode_jpeg = _decoder()
    if decode_jpeg is None:
        return False
    buffer = io.BytesIO()
    Image.new("RGB", (16, 8), (200, 100, 50)).save(buffer, "JPEG")
    data = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
    try:
        [photo] = decode_jpeg([data], mode=_rgb_mode(), device=device)
    except Exception:  # no nvjpeg in this build, a driver problem: Pillow decodes instead
        return False
    return tuple(photo.shape) == (3, 8, 16)


def _rgb_mode():
    from torchvision.io import ImageReadMode

    return ImageReadMode.RGB


# -- which files the device takes --------------------------------------------------------------


@dataclass
class _Jpeg:
    position: int  # in the batch
    data: torch.Tensor  # the file's bytes, uint8 on the CPU
    size: tuple[int, int]  # (width, height) from its header


def _read_jpeg(item: InputItem, preprocess: Preprocess) -> tuple[torch.Tensor, tuple] | None:
    """The bytes and size of a JPEG the device path gives exactly what Pillow's path gives;
    None for any other file, and for one that cannot be read: Pillow's path says why."""
    if item.error is not None or item.path is None:
        return None
    try:
        with open_regular(item.path) as handle:  # never a FIFO or a device: see inputs/filekinds.py
            head = handle.read(len(_SOI))
            if head != _SOI:
                return None
            data = bytearray(head + handle.read())
    except OSError:
        return None
    with recorded_warnings() as caught:  # a header that warns: the warning belongs in the result
        try:
            with Image.open(io.BytesIO(data)) as image:  # the header only: nothing is decoded
                refusal = _refusal(image, preprocess)
                size = image.size
        except Exception:  # damaged, over the pixel limit: Pillow's path words it
            return None
    if refusal is not None or caught:
        return None
    return torch.frombuffer(data, dtype=torch.uint8), size


def device_decode_refusal(path, preprocess: Preprocess) -> str | None:
    """Why the file at `path` goes to Pillow's path rather than the device, or None."""
    try:
        with open_regular(path) as handle, Image.open(handle) as image:
            return _refusal(image, preprocess)
    except Exception as exc:
        return f"Pillow's path reports it ({type(exc).__name__})"


def _refusal(image: Image.Image, preprocess: Preprocess) -> str | None:
    if not preprocess.fixed_size:  # views of their own sizes: they do not stack into a batch
        return "--resize keep: each photo is its own batch"
    # MPO (several pictures): Pillow warns of the frames. (A "JPEG" is a JpegImageFile: the
    # isinstance tells mypy so, for its `layer` and `bits`.)
    if image.format != "JPEG" or not isinstance(image, JpegImageFile):
        return f"not a plain JPEG ({image.format})"
    if image.mode != "RGB":  # grayscale, CMYK: converted by Pillow's rules
        return f"{image.mode} JPEG"
    if "adobe" in image.info or [layer[0] for layer in image.layer] == _RGB_COMPONENT_IDS:
        return "an Adobe or RGB-coded JPEG (colour transform left to libjpeg)"
    if getattr(image, "bits", 8) != 8:
        return f"{image.bits}-bit JPEG"
    refuse_over_pixel_limit(image)
    if image.getexif().get(_ORIENTATION, 1) in range(2, 9):
        return "EXIF orientation: Pillow turns the photo upright"
    width, height = image.size
    reason = preprocess.oversize_reason(width, height)
    if reason is not None:
        return reason
    rw, rh = preprocess.resized_size(width, height)
    if rw * rh > WHOLE_RESIZE_PIXELS:  # Pillow resamples the crop region alone
        return "a thin strip: resampled from its crop region"
    return None


# -- the decoder -------------------------------------------------------------------------------


class DeviceDecoder:
    """Called like `pipeline._decode_batch` (items, preprocess) → [Decoded], on one thread:
    JPEGs decoded on `device` as one batch, the other inputs by Pillow, in `pool` (the decode
    processes) when there is one, else here."""

    def __init__(self, device: torch.device, pool: Executor | None = None):
        self.device = device
        self.pool = pool
        # nvjpeg where it works; elsewhere torchvision's CPU decoder, then a copy to the device
        self.decode_on = device if device.type == "cuda" and _decodes_on(device) else None

    def __call__(self, items: Sequence[InputItem], preprocess: Preprocess) -> list[Decoded]:
        results: dict[int, Decoded] = {}
        jpegs = []
        for position, item in enumerate(items):
            found = _read_jpeg(item, preprocess)
            if found is not None:
                jpegs.append(_Jpeg(position, *found))
        taken = {jpeg.position for jpeg in jpegs}
        on_cpu = [i for i in range(len(items)) if i not in taken]
        later = self._start_on_cpu([items[i] for i in on_cpu], preprocess)
        with torch.no_grad():
            photos = self._decode([jpeg.data for jpeg in jpegs])
            done = [(j, p) for j, p in zip(jpegs, photos, strict=True) if _fits(p, j.size)]
            views = model_views([photo for _, photo in done], preprocess)
            hosts = _host_photos([photo for _, photo in done])
        for (jpeg, photo), view, host in zip(done, views, hosts, strict=True):
            results[jpeg.position] = Decoded(items[jpeg.position], host, view, pixels=photo)
        results.update(zip(on_cpu, later(), strict=True))
        # What the device decoder rejected (truncated, damaged): Pillow's path says why.
        rejected = sorted(i for i in taken if i not in results)
        again = _decode_batch([items[i] for i in rejected], preprocess)
        results.update(zip(rejected, again, strict=True))
        return [results[i] for i in range(len(items))]

    def _start_on_cpu(self, items: list[InputItem], preprocess: Preprocess):
        """Start Pillow's path on `items`; returns what gives their results, in order."""
        if self.pool is None or not items:
            return lambda: _decode_batch(items, preprocess)
        futures = [self.pool.submit(_decode_batch, [item], preprocess) for item in items]
        return lambda: [future.result()[0] for future in futures]

    def _decode(self, datas: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """The photos, uint8 [3, H, W] on the device; None for a file the decoder rejects."""
        if not datas:
            return []
        decode_jpeg = _decoder()
        on = self.decode_on or torch.device("cpu")
        try:
            photos = decode_jpeg(datas, mode=_rgb_mode(), device=on)
        except RuntimeError:  # one bad file fails the batch: decode them one by one
            photos = []
            for data in datas:
                try:
                    photos.extend(decode_jpeg([data], mode=_rgb_mode(), device=on))
                except RuntimeError:
                    photos.append(None)
        return [None if p is None else p.to(self.device, non_blocking=True) for p in photos]


def _fits(photo: torch.Tensor | None, size: tuple[int, int]) -> TypeGuard[torch.Tensor]:
    width, height = size
    return photo is not None and tuple(photo.shape) == (3, height, width)


def _host_photos(photos: list[torch.Tensor]) -> list[Image.Image]:
    """The photos as Pillow images on the host, for what is drawn on the CPU."""
    if not photos:
        return []
    if photos[0].device.type != "cuda":
        return [Image.fromarray(p.permute(1, 2, 0).cpu().numpy()) for p in photos]
    hosts = []
    for photo in photos:  # page-locked, copied without waiting; one wait for all of them
        host = torch.empty(photo.shape[1:] + (3,), dtype=torch.uint8, pin_memory=True)
        hosts.append(host.copy_(photo.permute(1, 2, 0), non_blocking=True))
    torch.cuda.current_stream(photos[0].device).synchronize()
    return [Image.fromarray(host.numpy()) for host in hosts]


# -- preprocessing with torch ops ---------------------------------------------------------------


def model_views(photos: Sequence[torch.Tensor], preprocess: Preprocess) -> list[torch.Tensor]:
    """`Preprocess.to_array` of each photo (uint8 [3, H, W]) as a float32 tensor [3, h, w] on
    the photo's device; photos of one size are resized together, _CHUNK_VALUES at a time."""
    views: list[torch.Tensor | None] = [None] * len(photos)
    by_size: dict[tuple[int, ...], list[int]] = {}
    for i, photo in enumerate(photos):
        by_size.setdefault(tuple(photo.shape), []).append(i)
    for shape, members in by_size.items():
        step = max(1, _CHUNK_VALUES // (shape[0] * shape[1] * shape[2]))
        for start in range(0, len(members), step):
            chunk = members[start : start + step]
            batch = torch.stack([photos[i] for i in chunk])
            normalised = _normalised(_cropped(batch, preprocess), preprocess)
            for i, view in zip(chunk, _padded(normalised, preprocess, shape), strict=True):
                views[i] = view
    return views  # type: ignore[return-value]  # each photo is in one size group: all set


# Photo values resized at once: their float64 copy takes 8 bytes each (256 MB here).
_CHUNK_VALUES = 1 << 25


def _cropped(batch: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """Resized and centre-cropped, as `Preprocess.model_view`: 0–255 floats [N, 3, h, w].
    Where the input reaches past the resized photo: zeros (pad mode's are set by `_padded`)."""
    height, width = batch.shape[2:]
    rw, rh = preprocess.resized_size(width, height)
    resized = _resized(batch, rw, rh, preprocess.interpolation)
    left, top = preprocess.crop_offset(width, height)
    x0, y0, x1, y1 = preprocess.photo_region(width, height)
    ch, cw = preprocess.input_size
    part = resized[:, :, y0 + top : y1 + top, x0 + left : x1 + left]
    if (x0, y0, x1, y1) == (0, 0, cw, ch):
        return part
    view = resized.new_zeros(batch.shape[:2] + (ch, cw))
    view[:, :, y0:y1, x0:x1] = part
    return view


def _resized(batch: torch.Tensor, width: int, height: int, interpolation: str) -> torch.Tensor:
    """Pillow's resize of 8-bit pictures: its two passes, each with its fixed-point weights
    (`_pillow_weights`) and its rounding, exact (sums of integers below 2**53: float64 holds
    them on any device)."""
    if interpolation == "nearest":
        rows = _nearest(batch.shape[2], height).to(batch.device)
        cols = _nearest(batch.shape[3], width).to(batch.device)
        return batch.index_select(2, rows).index_select(3, cols)
    batch = batch.double()
    # Pillow's passes: horizontal, then vertical (Resample.c up to Pillow 12; Pillow 13 goes
    # vertical first for some sizes, by a rule of its own: then a level here and there differs)
    for axis in (3, 2):
        new_size = height if axis == 2 else width
        if batch.shape[axis] != new_size:
            weights = _pillow_weights(batch.shape[axis], new_size, interpolation)
            weights = weights.to(batch.device)
            sums = weights @ batch if axis == 2 else batch @ weights.T
            batch = _fixed_point_levels(sums)
    return batch.float()


_PRECISION_BITS = 22  # Pillow's Resample.c for 8-bit pictures: 32 - 8 - 2
_SUPPORT = {"bilinear": 1.0, "bicubic": 2.0}


def _fixed_point_levels(sums: torch.Tensor) -> torch.Tensor:
    """Pillow's clip8: sums of levels × weights in fixed point, rounded half up to 0–255."""
    half = float(1 << (_PRECISION_BITS - 1))
    return torch.floor((sums + half) / float(1 << _PRECISION_BITS)).clamp_(0.0, 255.0)


@functools.lru_cache(maxsize=256)
def _pillow_weights(size: int, new_size: int, interpolation: str) -> torch.Tensor:
    """Pillow's resampling weights along an axis, [new_size, size] in its 8-bit fixed point
    (× 2**22, rounded away from zero): precompute_coeffs and normalize_coeffs_8bpc of its
    Resample.c, with its operations in its order, so the weights are its very integers."""
    scale = size / new_size
    filterscale = max(scale, 1.0)
    support = _SUPPORT[interpolation] * filterscale
    centres = (np.arange(new_size, dtype=np.float64) + 0.5) * scale
    first = np.maximum(np.trunc(centres - support + 0.5), 0)[:, None]
    last = np.minimum(np.trunc(centres + support + 0.5), size)[:, None]
    sources = np.arange(size, dtype=np.float64)[None, :]
    weights = _pillow_filter(
        interpolation, (sources - centres[:, None] + 0.5) * (1.0 / filterscale)
    )
    weights[(sources < first) | (sources >= last)] = 0.0
    totals = np.cumsum(weights, axis=1)[:, -1:]  # summed in order, as its loop does
    weights = np.divide(weights, totals, out=np.zeros_like(weights), where=totals != 0.0)
    scaled = weights * float(1 << _PRECISION_BITS)
    return torch.from_numpy(np.trunc(np.where(scaled < 0, scaled - 0.5, scaled + 0.5)))


def _pillow_filter(interpolation: str, x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    if interpolation == "bilinear":
        return np.where(x < 1.0, 1.0 - x, 0.0)
    a = -0.5  # Pillow's bicubic
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@functools.lru_cache(maxsize=256)
def _nearest(size: int, new_size: int) -> torch.Tensor:
    """The source indices Pillow's nearest resize takes along an axis: asked of Pillow itself,
    on a strip of indices (its coordinate arithmetic differs from torch's at exact halves)."""
    strip = Image.fromarray(np.arange(size, dtype=np.int32)[None, :])
    picked = strip.resize((new_size, 1), RESAMPLING["nearest"])
    return torch.from_numpy(np.asarray(picked, dtype=np.int64)[0].copy())


def _padded(views: torch.Tensor, preprocess: Preprocess, shape: tuple[int, ...]) -> torch.Tensor:
    """Normalised views [N, 3, h, w] of photos of `shape` (3, H, W), with pad mode's padding 0
    (the mean colour exactly), as `Preprocess.to_array` makes it."""
    if preprocess.resize_mode != "pad":
        return views
    x0, y0, x1, y1 = preprocess.photo_region(shape[2], shape[1])
    framed = torch.zeros_like(views)
    framed[:, :, y0:y1, x0:x1] = views[:, :, y0:y1, x0:x1]
    return framed


def _normalised(views: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """(pixels / 255 - mean) / std in float32, as `Preprocess.to_array`."""
    mean = torch.tensor(preprocess.mean, dtype=torch.float32, device=views.device)
    std = torch.tensor(preprocess.std, dtype=torch.float32, device=views.device)
    return (views / 255.0 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
