"""`--shard i/n`: split one prompt set across n machines (or n vLLM replicas) without coordination.

An item belongs to shard i when a hash of its id falls in bucket i - 1 of n: every machine computes
the same split from the same prompt file, whatever its order, and no item lands in two shards.
`caikit merge` (caikit.merge) puts the shard run directories back together.
"""

from __future__ import annotations

import hashlib
import re
from typing import Callable, Iterable, TypeVar

from caikit.errors import UserError

T = TypeVar("T")
_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str) -> tuple[int, int] | None:
    """'2/4' -> (2, 4); '' -> None (no sharding). Shards count from 1."""
    if not text:
        return None
    m = _SHARD.match(str(text))
    if not m:
        raise UserError(f"--shard must look like i/n (e.g. 1/4), got {text!r}")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 1 <= i <= n:
        raise UserError(f"--shard {text}: need 1 <= i <= n")
    return i, n


def shard_of(item_id: str, n: int) -> int:
    """1-based shard of an id: stable across machines, Python versions and file order."""
    digest = hashlib.sha256(str(item_id).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % n + 1


def select_shard(items: Iterable[T], shard: str, id_of: Callable[[T], str]) -> list[T]:
    """The items of shard `shard` ('i/n'); all of them when `shard` is ''."""
    parsed = parse_shard(shard)
    items = list(items)
    if parsed is None:
        return items
    i, n = parsed
    return [item for item in items if shard_of(id_of(item), n) == i]


def missing_shards(shards: Iterable[str]) -> list[str] | None:
    """The 'i/n' shards absent from `shards` (labels of the runs at hand; '' = an unsharded run).

    [] when the runs cover everything (all n shards present, or an unsharded run among them);
    None when they split the items in different ways (1/2 beside 1/3): coverage cannot be told.
    """
    parsed = [parse_shard(s) for s in shards]
    if not parsed or any(p is None for p in parsed):
        return []
    counts = {n for _, n in parsed}
    if len(counts) != 1:
        return None
    (n,) = counts
    present = {i for i, _ in parsed}
    return [f"{i}/{n}" for i in range(1, n + 1) if i not in present]
