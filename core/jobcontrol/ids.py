"""Job and worker ids: UUIDv7 text, so ids sort by creation time and index well."""

from __future__ import annotations

import os
import re
import threading
import time
import uuid

from jobcontrol.errors import InvalidArgument

_lock = threading.Lock()
_last = (0, 0)  # (milliseconds, 74-bit counter) of the previous id


def new_id() -> str:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then 74 random bits.

    Ids from one process strictly increase even within a millisecond (RFC 9562 §6.2,
    method 2: the random part is incremented), so jobs submitted together keep their
    order wherever the store orders by id."""
    global _last
    millis = time.time_ns() // 1_000_000
    counter = int.from_bytes(os.urandom(10), "big") >> 7  # 73 bits: room to increment
    with _lock:
        if (millis, counter) <= _last:
            millis, counter = _last[0], _last[1] + 1
        _last = (millis, counter)
    value = (
        (millis & ((1 << 48) - 1)) << 80
        | 0x7 << 76  # version 7
        | (counter >> 62) << 64  # rand_a: 12 bits
        | 0x2 << 62  # RFC 4122 variant
        | counter & ((1 << 62) - 1)  # rand_b: 62 bits
    )
    return str(uuid.UUID(int=value))


_CANONICAL = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


def parse_id(value: str, *, field: str = "job_id") -> str:
    """Return the canonical form of an id, or refuse it as a malformed argument.

    Only the canonical text form: uuid.UUID alone accepts braces, URNs, non-ASCII digits
    and surrounding spaces, which would let two spellings name one job."""
    if not value:
        raise InvalidArgument(field, "is required")
    if not _CANONICAL.fullmatch(value):
        raise InvalidArgument(field, f"must be a UUID like 0190c6f2-...; got {value[:64]!r}")
    return str(uuid.UUID(value))
