"""The images a run explains: finding them, decoding them, sharing them out.

- `finding`: command-line arguments (files, folders, globs, '-' for paths on stdin) to an
  ordered list of `InputItem`s, each with a unique output key (`keys`); folders and globs
  leave out a run's own outputs (`skips`).
- `filekinds`: image names, and regular files only: a FIFO or a device is never read.
- `decoding`: one file to the RGB picture a viewer shows; `reasons` says why one could not be
  decoded, `decodewarnings` keeps what decoding warned about for that image's result.
- `sharding`: which inputs `--shard K/N` gives each of N processes.

Nothing here imports torch.
"""

from .decodewarnings import recorded_warnings
from .decoding import (
    DecodedImage,
    decode_image,
    load_image,
    photo_size,
    refuse_over_pixel_limit,
)
from .filekinds import IMAGE_EXTENSIONS, MISSING, open_regular
from .finding import InputItem, collect_inputs
from .keys import output_keys
from .reasons import decode_reason
from .sharding import parse_shard, select_shard, shard_of

__all__ = [
    "IMAGE_EXTENSIONS",
    "MISSING",
    "InputItem",
    "DecodedImage",
    "collect_inputs",
    "output_keys",
    "decode_image",
    "decode_reason",
    "load_image",
    "open_regular",
    "photo_size",
    "refuse_over_pixel_limit",
    "recorded_warnings",
    "parse_shard",
    "shard_of",
    "select_shard",
]
