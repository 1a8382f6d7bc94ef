"""Opaque page tokens for ListJobs (AIP-158): where the last page ended, bound to the
filter it was issued for."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from jobcontrol.errors import InvalidArgument
from jobcontrol.store.protocol import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, JobFilter

_VERSION = 1
# ListJobs issues tokens of about 100 characters. Anything much longer is not one of
# ours, and refusing it before decoding keeps a hostile token (JSON nested a thousand
# levels deep, megabytes of base64) away from the decoder.
MAX_TOKEN_LENGTH = 512


@dataclass(frozen=True, slots=True)
class PageCursor:
    before_id: str
    filter_fingerprint: str


def encode_token(cursor: PageCursor) -> str:
    raw = json.dumps({"v": _VERSION, "b": cursor.before_id, "f": cursor.filter_fingerprint})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_token(token: str, job_filter: JobFilter) -> PageCursor | None:
    """The cursor in `token`, or None for the first page. Refuses tokens that are not
    ours or that were issued for a different filter."""
    if not token:
        return None
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidArgument("page_token", "is not a token returned by ListJobs")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        cursor = PageCursor(before_id=str(data["b"]), filter_fingerprint=str(data["f"]))
        valid = data["v"] == _VERSION
    except (ValueError, binascii.Error, KeyError, TypeError, RecursionError):
        valid = False
    if not valid:
        raise InvalidArgument("page_token", "is not a token returned by ListJobs")
    if cursor.filter_fingerprint != job_filter.fingerprint():
        raise InvalidArgument(
            "page_token", "was issued for a different filter; repeat the filter unchanged"
        )
    return cursor


def effective_page_size(page_size: int) -> int:
    if page_size < 0:
        raise InvalidArgument(
            "page_size", f"must be between 0 and {MAX_PAGE_SIZE}, got {page_size}"
        )
    if page_size == 0:
        return DEFAULT_PAGE_SIZE
    return min(page_size, MAX_PAGE_SIZE)
