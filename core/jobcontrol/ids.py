"""Job and worker ids: UUIDv7 text, so ids sort by creation time and index well."""

from __future__ import annotations

import os
import time
import uuid

from jobcontrol.errors import InvalidArgument


def new_id() -> str:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then random bits."""
    millis = time.time_ns() // 1_000_000
    value = (millis & ((1 << 48) - 1)) << 80 | int.from_bytes(os.urandom(10), "big")
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return str(uuid.UUID(int=value))


def parse_id(value: str, *, field: str = "job_id") -> str:
    """Return the canonical form of an id, or refuse it as a malformed argument."""
    if not value:
        raise InvalidArgument(field, "is required")
    if len(value) != 36:
        raise InvalidArgument(field, f"must be a UUID like 0190c6f2-...; got {value[:64]!r}")
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise InvalidArgument(
            field, f"must be a UUID like 0190c6f2-...; got {value[:64]!r}"
        ) from None
    return str(parsed)
