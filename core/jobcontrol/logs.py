"""Logging set-up shared by the server and the worker: text for a terminal, or one JSON
object per line for log shippers (Loki, Vector, CloudWatch), each carrying the fields a
caller passed in `extra=` (job_id, job_type, attempt, duration_seconds, ...)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, extras, traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def add_logging_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    parser.add_argument(
        "--log-level",
        type=str.lower,
        choices=LEVELS,
        default=env.get("JOBCONTROL_LOG_LEVEL", "info").lower(),
        help="least severe level logged (env JOBCONTROL_LOG_LEVEL)",
    )
    parser.add_argument(
        "--log-format",
        type=str.lower,
        choices=FORMATS,
        default=env.get("JOBCONTROL_LOG_FORMAT", "text").lower(),
        help="text for people, json for log shippers: one object per line "
        "(env JOBCONTROL_LOG_FORMAT)",
    )


def configure_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Set up logging from the flags of `add_logging_arguments`. argparse checks choices
    on the command line only, not defaults taken from the environment: a bad
    JOBCONTROL_LOG_LEVEL is a one-line usage error here rather than a traceback."""
    for value, choices, env in (
        (args.log_level, LEVELS, "JOBCONTROL_LOG_LEVEL"),
        (args.log_format, FORMATS, "JOBCONTROL_LOG_FORMAT"),
    ):
        if value not in choices:
            parser.error(f"env {env} must be one of {', '.join(choices)}, got {value!r}")
    configure_logging(args.log_level, args.log_format)


def configure_logging(level: str, log_format: str) -> None:
    # Neither format shows where a record was made, nor its thread or process: do not
    # collect them for every record (the logging HOWTO, "Optimization"). A busy worker
    # writes two records a job, and the caller's frame was the dearest part of each.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
