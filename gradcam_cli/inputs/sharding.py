"""Sharding: which inputs one of N processes explains (`--shard K/N`)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from ..errors import UsageError
from .finding import InputItem


def parse_shard(text: str) -> tuple[int, int]:
    """`--shard K/N` → (K, N), 1 ≤ K ≤ N."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise UsageError(f"shard= takes K/N (e.g. 2/8 for the second of 8 shares), got '{text}'")
    k, n = int(match[1]), int(match[2])
    if not 1 <= k <= n:
        raise UsageError(f"shard='{text}': K must be from 1 to N")
    return k, n


def shard_of(key: str, shards: int) -> int:
    """The shard (1..N) an input belongs to, from its key alone.

    A hash, not a position in the list: every process agrees on the split even when they list
    the files in another order or some see more files, and an input never moves to another shard
    when others are added. The rule: blake2b (8 bytes) of the key's UTF-8, big-endian, modulo N,
    plus 1. Another N moves inputs (from 3 shards to 4, about three inputs in four change their
    number), except that doubling N splits each shard in two: shard K of N becomes K or K + N.
    """
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards + 1


def select_shard(items: Sequence[InputItem], shard: tuple[int, int] | None) -> list[InputItem]:
    """The items of shard K/N (`shard` = (K, N)), in their order; all of them for None."""
    if shard is None:
        return list(items)
    k, n = shard
    return [item for item in items if shard_of(item.key, n) == k]
