"""ListJobs pages (AIP-158): how many jobs fit on one, and opaque page tokens saying
where the last page ended, bound to the filter it was issued for."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jobcontrol.errors import InvalidArgument
from jobcontrol.store.protocol import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, JobFilter

_VERSION = 1
# A page stops before its jobs' estimated encoding passes this, well under the 16 MiB
# gRPC message limit (always at least one job: a single job is at most ~3 MiB, its
# payload and result 1 MiB each as JSON). Without it 50 jobs of ~1 MiB payloads made a
# page the server could not send (RESOURCE_EXHAUSTED).
PAGE_BYTES = 6 * 1024 * 1024
# A payload of many small numbers grows from JSON to a protobuf Struct: `"k1":1,` is 7
# bytes of JSON and 17 as a Struct entry.
_STRUCT_GROWTH = 3
_JOB_OVERHEAD = 512
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


def encoded_size(row: Mapping[str, Any]) -> int:
    """A generous estimate of a job row's size as a protobuf Job, from its text columns
    (payload, result, labels, error, ...) as stored."""
    values = (row[key] for key in row.keys())  # noqa: SIM118 (sqlite3.Row has no .values())
    text = sum(len(value) for value in values if isinstance(value, str))
    return _STRUCT_GROWTH * text + _JOB_OVERHEAD


def rows_on_page(rows: Sequence[Mapping[str, Any]], limit: int, budget: int | None = None) -> int:
    """How many of `rows` (in page order) make the page: at most `limit`, stopping
    before their estimated encoding passes `budget` (PAGE_BYTES), never fewer than one."""
    budget = PAGE_BYTES if budget is None else budget
    total = 0
    for count, row in enumerate(rows[:limit]):
        total += encoded_size(row)
        if count and total > budget:
            return count
    return min(len(rows), limit)


def effective_page_size(page_size: int) -> int:
    if page_size < 0:
        raise InvalidArgument(
            "page_size", f"must be between 0 and {MAX_PAGE_SIZE}, got {page_size}"
        )
    if page_size == 0:
        return DEFAULT_PAGE_SIZE
    return min(page_size, MAX_PAGE_SIZE)
