"""Limits on what clients and workers may store, checked before anything is written.

The server calls these to answer with field-level errors; the store calls them too, so
a worker or script that talks to the store directly cannot write what the API refuses.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from jobcontrol.errors import InvalidArgument
from jobcontrol.jobs import JobSpec, Progress

MIN_PRIORITY = 0
MAX_PRIORITY = 1000
MAX_ATTEMPTS_LIMIT = 100
MAX_TYPE_LENGTH = 128
MAX_IDEMPOTENCY_KEY_LENGTH = 256
MAX_LABELS = 64
MAX_LABEL_KEY_LENGTH = 63
MAX_LABEL_VALUE_LENGTH = 256
MAX_REASON_LENGTH = 1024
MAX_STAGE_LENGTH = 64
MAX_PROGRESS_MESSAGE_LENGTH = 1024
MAX_DELAY = timedelta(days=366)
MAX_TIMEOUT = timedelta(days=7)
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024

TYPE_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_-]*(\.[A-Za-z][A-Za-z0-9_-]*)*")
LABEL_KEY_PATTERN = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?")


@dataclass(frozen=True, slots=True)
class Limits:
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES


DEFAULT_LIMITS = Limits()


def validate_type(value: str, *, field: str = "type") -> None:
    if not value:
        raise InvalidArgument(field, "is required, e.g. 'audio.transcode'")
    if len(value) > MAX_TYPE_LENGTH or not TYPE_PATTERN.fullmatch(value):
        raise InvalidArgument(
            field,
            f"must be dot-separated words of letters, digits, '_' and '-', each starting "
            f"with a letter, at most {MAX_TYPE_LENGTH} characters; got {value[:64]!r}",
        )


def encode_json(value: Mapping[str, Any], *, field: str, max_bytes: int) -> str:
    """Serialize a payload or result, refusing what JSON cannot hold or what is too big."""
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise InvalidArgument(field, "must not contain NaN or Infinity") from None
    except (TypeError, RecursionError):
        raise InvalidArgument(field, "must be a JSON object") from None
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidArgument(field, "must hold only valid UTF-8 text") from None
    if size > max_bytes:
        raise InvalidArgument(field, f"is {size} bytes as JSON; the limit is {max_bytes}")
    return text


def validate_labels(labels: Mapping[str, str], *, field: str = "labels") -> None:
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(field, f"at most {MAX_LABELS} labels, got {len(labels)}")
    for key, value in labels.items():
        if len(key) > MAX_LABEL_KEY_LENGTH or not LABEL_KEY_PATTERN.fullmatch(key):
            raise InvalidArgument(
                f"{field}[{key[:64]!r}]",
                f"keys are letters, digits, '.', '_', '-' and '/', starting and ending with "
                f"a letter or digit, at most {MAX_LABEL_KEY_LENGTH} characters",
            )
        if len(value) > MAX_LABEL_VALUE_LENGTH:
            raise InvalidArgument(
                f"{field}[{key!r}]", f"values are at most {MAX_LABEL_VALUE_LENGTH} characters"
            )
        _check_text(value, field=f"{field}[{key!r}]")


def validate_spec(spec: JobSpec, limits: Limits = DEFAULT_LIMITS) -> str:
    """Check a submission; returns the payload as JSON text for storage."""
    validate_type(spec.type)
    payload = encode_json(spec.payload, field="payload", max_bytes=limits.max_payload_bytes)
    if not MIN_PRIORITY <= spec.priority <= MAX_PRIORITY:
        raise InvalidArgument(
            "priority",
            f"must be between {MIN_PRIORITY} and {MAX_PRIORITY} (higher runs first), "
            f"got {spec.priority}",
        )
    if spec.idempotency_key is not None:
        if not spec.idempotency_key:
            raise InvalidArgument("idempotency_key", "must not be empty when given")
        if len(spec.idempotency_key) > MAX_IDEMPOTENCY_KEY_LENGTH:
            raise InvalidArgument(
                "idempotency_key", f"must be at most {MAX_IDEMPOTENCY_KEY_LENGTH} characters"
            )
        _check_text(spec.idempotency_key, field="idempotency_key")
    if spec.run_after is not None and spec.delay is not None:
        raise InvalidArgument("delay", "give either run_after or delay, not both")
    if spec.run_after is not None and spec.run_after.tzinfo is None:
        raise InvalidArgument("run_after", "must carry a time zone")
    if spec.delay is not None and not timedelta(0) <= spec.delay <= MAX_DELAY:
        raise InvalidArgument(
            "delay", f"must be between 0 and {MAX_DELAY.days} days, got {spec.delay}"
        )
    if spec.max_attempts is not None and not 1 <= spec.max_attempts <= MAX_ATTEMPTS_LIMIT:
        raise InvalidArgument(
            "max_attempts",
            f"must be between 1 and {MAX_ATTEMPTS_LIMIT} (0 or unset means the default, 3), "
            f"got {spec.max_attempts}",
        )
    if spec.timeout is not None and not timedelta(0) < spec.timeout <= MAX_TIMEOUT:
        raise InvalidArgument(
            "timeout",
            f"must be more than 0 and at most {MAX_TIMEOUT.days} days, got {spec.timeout}",
        )
    validate_labels(spec.labels)
    return payload


def validate_progress(progress: Progress) -> None:
    if not math.isfinite(progress.percent) or not 0 <= progress.percent <= 100:
        raise InvalidArgument("percent", f"must be between 0 and 100, got {progress.percent}")
    if len(progress.stage) > MAX_STAGE_LENGTH:
        raise InvalidArgument("stage", f"must be at most {MAX_STAGE_LENGTH} characters")
    if len(progress.message) > MAX_PROGRESS_MESSAGE_LENGTH:
        raise InvalidArgument(
            "message", f"must be at most {MAX_PROGRESS_MESSAGE_LENGTH} characters"
        )
    _check_text(progress.stage, field="stage")
    _check_text(progress.message, field="message")


def validate_reason(reason: str) -> None:
    if len(reason) > MAX_REASON_LENGTH:
        raise InvalidArgument("reason", f"must be at most {MAX_REASON_LENGTH} characters")
    _check_text(reason, field="reason")


def _check_text(value: str, *, field: str) -> None:
    """Refuse text that would not survive a round trip through the store and protobuf."""
    if "\x00" in value:
        raise InvalidArgument(field, "must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(field, "must be valid UTF-8 text") from None
