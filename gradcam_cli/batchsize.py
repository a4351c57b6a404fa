"""`--batch-size auto`: as many images per forward as keep the model busy, and no more than fit.

A batch pays a fixed cost (Python, hooks, the head-only backward's setup, kernel launches)
whatever its size; a small model on small images spends most of its time there at batch 8. The
layer probe that every run makes (layers.probe_layers) measures what one image's forward writes
(`Probe.activation_bytes`), so the batch is sized by work, not guessed:

- enough images for about 1 GiB of activations per forward (resnet50 at 224²: 122 MiB an
  image → 8; resnet18: 29 MiB → 32; the demo model at 128²: 6 MiB → 64), a power of two, at
  most 64;
- no more than fit in a quarter of the memory available now (a GPU's free memory; otherwise
  the system's available memory, or the container's cgroup limit when that is lower),
  counting each image's activations and an allowance for the decoded photos in flight (three
  batches of 12-megapixel RGB photos, 108 MB an image: with 16 GB available, at most 32);
- no more than there are images.

A batch that still runs out of memory is split and retried as before (oom.py).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .errors import UsageError

if TYPE_CHECKING:
    import torch

__all__ = [
    "AUTO",
    "MAX_AUTO_BATCH_SIZE",
    "auto_batch_size",
    "available_memory",
    "choose_batch_size",
    "parse_batch_size",
]

AUTO = "auto"
MAX_AUTO_BATCH_SIZE = 64
ACTIVATIONS_PER_BATCH = 1 << 30
MEMORY_SHARE = 4  # use at most 1/MEMORY_SHARE of the memory available
# Decoded photos held per image while its batch is decoded, explained and written.
PHOTO_ALLOWANCE = 3 * 12_000_000 * 3


def auto_batch_size(activation_bytes: int, images: int, memory_budget: int) -> int:
    """The batch for a model writing `activation_bytes` per image, given the memory at hand."""
    per_image = max(1, activation_bytes)
    by_work = ACTIVATIONS_PER_BATCH // per_image
    by_memory = memory_budget // MEMORY_SHARE // (per_image + PHOTO_ALLOWANCE)
    size = min(by_work, by_memory, MAX_AUTO_BATCH_SIZE, max(1, images))
    return _power_of_two_at_most(max(1, size))


def parse_batch_size(value: int | str) -> int | str:
    """`--batch-size`: AUTO, or a whole number 1–MAX_BATCH_SIZE (UsageError otherwise)."""
    from .pipeline import check_batch_size

    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return AUTO
        if not text.isdigit():
            raise UsageError(f"batch_size= must be a whole number or 'auto', got '{value}'")
        value = int(text)
    return check_batch_size(value)


def choose_batch_size(requested: int | str, activation_bytes: int, images: int, device) -> int:
    """`requested` as given, or for AUTO the size `auto_batch_size` picks on `device`."""
    if requested != AUTO:
        return int(requested)
    return auto_batch_size(activation_bytes, images, available_memory(device))


def available_memory(device: torch.device) -> int:
    """Bytes free now: the CUDA device's free memory, else the system's available memory."""
    if device.type == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return _system_available_memory()


def _system_available_memory() -> int:
    known = [n for n in (_meminfo_available(), _cgroup_headroom()) if n is not None]
    return min(known) if known else _UNKNOWN_MEMORY


_UNKNOWN_MEMORY = 4 << 30  # assume a small machine


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError):
        return None


def _cgroup_headroom(root: str = "/sys/fs/cgroup") -> int | None:
    """memory.max − memory.current of this process's cgroup (v2), or None when unlimited."""
    for folder in (f"{root}{_cgroup_path()}", root):
        try:
            with open(f"{folder}/memory.max") as limit, open(f"{folder}/memory.current") as used:
                text = limit.read().strip()
                return None if text == "max" else max(0, int(text) - int(used.read().strip()))
        except (OSError, ValueError):
            continue
    return None


def _cgroup_path() -> str:
    try:
        with open("/proc/self/cgroup") as cgroups:
            for line in cgroups:
                if line.startswith("0::"):
                    return line[3:].strip().rstrip("/")
    except OSError:
        pass
    return ""


def _power_of_two_at_most(n: int) -> int:
    return 1 << (n.bit_length() - 1)
