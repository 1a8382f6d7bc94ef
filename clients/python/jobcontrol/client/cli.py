"""`jobctl`: submit, follow, cancel and inspect jobs from a shell (docs/architecture.md).

Every command takes `--json`: commands about one job print it as one JSON object,
`list` and `workers` print one JSON array (`[]` when nothing matches), and the streams
(`watch`, `submit --watch`, `top`) print one JSON object per event and line. The
objects are the proto3 JSON forms of the API's messages, as grpcurl prints them.

Exit codes, so scripts can branch on the outcome of a job:

    0   the command worked; for `watch` and `submit --watch`: the job SUCCEEDED
    1   the watched job FAILED
    2   the watched job was CANCELLED
    3   the server refused the call or could not be reached: stderr says
        `jobctl: <STATUS>: <message>`, e.g. `jobctl: NOT_FOUND: job … not found`
    64  bad command line (usage)
    130 interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from itertools import islice
from pathlib import Path
from typing import Any, NoReturn

from jobcontrol import convert
from jobcontrol.client import render, top
from jobcontrol.client.errors import status_name
from jobcontrol.client.options import (
    DEFAULT_ADDRESS,
    DEFAULT_TIMEOUT,
    DEFAULT_WATCH_RECONNECT_TIMEOUT,
    TlsOptions,
)
from jobcontrol.client.sync import JobControlClient
from jobcontrol.durations import SYNTAX, duration_arg, format_duration, optional_duration_arg
from jobcontrol.errors import JobControlError
from jobcontrol.jobs import JobEvent, JobState

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CANCELLED = 2
EXIT_ERROR = 3
EXIT_USAGE = 64
EXIT_INTERRUPTED = 130

_EXIT_FOR_STATE = {
    JobState.SUCCEEDED: EXIT_OK,
    JobState.FAILED: EXIT_FAILED,
    JobState.CANCELLED: EXIT_CANCELLED,
}
DEFAULT_LIST_LIMIT = 50

Command = Callable[[JobControlClient, argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 64 (EX_USAGE), keeping 2 free for a CANCELLED job."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


class _UsageError(Exception):
    """A command line that parsed but makes no sense; reported like argparse's errors."""


def _connection_flags(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Accepted before and after the subcommand. The subcommands' copies default to
    SUPPRESS so they do not overwrite a value given before the subcommand."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("connection")
    group.add_argument(
        "--addr",
        default=default(os.environ.get("JOBCONTROL_ADDR", DEFAULT_ADDRESS)),
        help=f"server host:port (env JOBCONTROL_ADDR; default {DEFAULT_ADDRESS})",
    )
    group.add_argument(
        "--token-file",
        type=Path,
        default=default(None),
        metavar="FILE",
        help="file holding the bearer token (default: env JOBCONTROL_AUTH_TOKEN)",
    )
    group.add_argument(
        "--tls", action="store_true", default=default(False), help="TLS with the system CAs"
    )
    group.add_argument(
        "--tls-ca", type=Path, default=default(None), metavar="FILE", help="PEM CA bundle: TLS"
    )
    group.add_argument(
        "--tls-cert", type=Path, default=default(None), metavar="FILE", help="client cert (mTLS)"
    )
    group.add_argument(
        "--tls-key", type=Path, default=default(None), metavar="FILE", help="client key (mTLS)"
    )
    group.add_argument(
        "--timeout",
        type=optional_duration_arg,
        default=default(timedelta(seconds=DEFAULT_TIMEOUT)),
        metavar="DURATION",
        help=f"deadline of each call; 0: none (default {format_duration(DEFAULT_TIMEOUT)})",
    )


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"labels are key=value, got {text!r}")
    return key, value


def _state(text: str) -> JobState:
    try:
        return JobState(text.upper())
    except ValueError:
        allowed = ", ".join(state.lower() for state in JobState)
        raise argparse.ArgumentTypeError(f"unknown state {text!r}; use {allowed}") from None


def _payload(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"--payload is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--payload must be a JSON object, e.g. '{\"a\": 1}'")
    return value


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="jobctl",
        description="Submit, follow and cancel jobcontrol jobs. "
        "--json on any command prints JSON: one object for one job, an array for "
        "`list` and `workers`, one object per line for `watch` and `top`. "
        f"{SYNTAX[0].upper()}{SYNTAX[1:]}.",
        epilog="exit codes: 0 ok / job SUCCEEDED, 1 job FAILED, 2 job CANCELLED, "
        "3 call failed (jobctl: STATUS: message), 64 usage, 130 interrupted",
    )
    _connection_flags(p, suppress=False)
    commands = p.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        help="one of these; `jobctl COMMAND --help` lists its options",
    )

    def command(name: str, run: Command, help: str, json_help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        _connection_flags(sub, suppress=True)
        sub.add_argument("--json", action="store_true", help=json_help)
        sub.set_defaults(run=run, watch_reconnect_timeout=DEFAULT_WATCH_RECONNECT_TIMEOUT)
        return sub

    event_json = (
        "one JSON object per event: proto3 JSON of jobcontrol.v1.JobEvent "
        "(lowerCamelCase, enum names, int64 as strings)"
    )

    submit = command(
        "submit",
        _submit,
        "submit a job; prints its id (or follows it)",
        "print the job as one JSON object (with --watch: one JSON object per event)",
    )
    submit.add_argument("type", help="job type, e.g. demo.sleep")
    submit.add_argument(
        "--payload", type=_payload, default={}, metavar="JSON", help="input, a JSON object"
    )
    submit.add_argument(
        "--priority", type=int, default=0, metavar="N", help="0 (default) to 1000, higher first"
    )
    _label_flag(submit, "a label to set; repeatable")
    submit.add_argument(
        "--idempotency-key", metavar="KEY", help="makes the submission safe to repeat"
    )
    submit.add_argument(
        "--delay", type=optional_duration_arg, metavar="DURATION", help="wait before it may run"
    )
    submit.add_argument(
        "--job-timeout",
        type=duration_arg,
        metavar="DURATION",
        help="longest one attempt may run (default: no limit)",
    )
    submit.add_argument(
        "--max-attempts", type=int, metavar="N", help="attempts before it fails (1-100)"
    )
    submit.add_argument("--watch", action="store_true", help="follow it like `jobctl watch`")

    get = command("get", _get, "print a job as JSON", "one line instead of indented")
    get.add_argument("id", help="the job's id")

    listing = command(
        "list", _list, "list jobs, newest first", "print one JSON array of jobs ([] if none)"
    )
    _filter_flags(listing)
    listing.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIST_LIMIT,
        metavar="N",
        help=f"at most this many (default {DEFAULT_LIST_LIMIT}; 0: all)",
    )

    watch = command("watch", _watch, "follow a job until it finishes", event_json)
    watch.add_argument("id", help="the job's id")
    watch.add_argument(
        "--after-sequence", type=int, metavar="N", help="replay the events after this one"
    )

    cancel = command("cancel", _cancel, "cancel a job", "print the job as one JSON object")
    cancel.add_argument("id", help="the job's id")
    cancel.add_argument("--reason", default="", help="why, recorded on the job")

    retry = command(
        "retry", _retry, "run a FAILED or CANCELLED job again", "print the job as one JSON object"
    )
    retry.add_argument("id", help="the job's id")

    workers = command(
        "workers", _workers, "list workers", "print one JSON array of workers ([] if none)"
    )
    workers.add_argument("--all", action="store_true", help="include stopped and lost ones")

    live = command(
        "top",
        _top,
        "a live table of jobs and workers; Ctrl-C leaves",
        "print every change to matching jobs as it happens, one JSON event per line",
    )
    _filter_flags(live)
    live.add_argument(
        "--rows", type=int, metavar="N", help="job rows to show (default: fit the terminal)"
    )
    live.add_argument(
        "--once", action="store_true", help="print the table once and exit (for scripts)"
    )
    live.add_argument(
        "--after-sequence",
        type=int,
        metavar="N",
        help="first replay the stored events after this one (a JobEvent's sequence)",
    )
    live.set_defaults(watch_reconnect_timeout=top.RECONNECT_TIMEOUT)
    return p


def _label_flag(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument(
        "--label", type=_label, action="append", default=[], metavar="K=V", help=help
    )


def _filter_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state",
        type=_state,
        action="append",
        default=[],
        help="only jobs in this state (pending, running, succeeded, failed, cancelled); repeatable",
    )
    parser.add_argument(
        "--type", action="append", default=[], help="only jobs of this type; repeatable"
    )
    _label_flag(parser, "only jobs with this label; repeatable, all must match")


def _submit(client: JobControlClient, args: argparse.Namespace) -> int:
    job = client.submit(
        args.type,
        args.payload,
        priority=args.priority,
        labels=dict(args.label),
        idempotency_key=args.idempotency_key,
        delay=args.delay,
        timeout=args.job_timeout,
        max_attempts=args.max_attempts,
    )
    for warning in job.warnings:
        print(f"jobctl: warning: {warning}", file=sys.stderr)
    if args.watch:
        print(f"submitted job {job.id}", file=sys.stderr if args.json else sys.stdout)
        warned = bool(job.warnings)
        # A new job's story from its first event: a snapshot would hide what happened
        # before the watch began (a first attempt that already failed and was retried).
        # A job an earlier submission made may have a long history: its snapshot.
        after = 0 if job.created else None
        return _follow(client, job.id, as_json=args.json, after_sequence=after, warned=warned)
    if args.json:
        render.dump_json(convert.job_to_json(job))
    else:
        print(job.id)
    return EXIT_OK


def _get(client: JobControlClient, args: argparse.Namespace) -> int:
    job = convert.job_to_json(client.get(args.id))
    render.dump_json(job, indent=None if args.json else 2)
    return EXIT_OK


def _list(client: JobControlClient, args: argparse.Namespace) -> int:
    if args.limit < 0:
        raise _UsageError(f"--limit must be 0 (all) or more, got {args.limit}")
    limit = args.limit or None
    jobs = client.list(
        states=args.state,
        types=args.type,
        labels=dict(args.label),
        page_size=min(limit, 1000) if limit else 0,
    )
    shown = islice(jobs, limit)
    if args.json:
        render.dump_json_array(convert.job_to_json(job) for job in shown)
    elif not render.print_table((render.job_row(job) for job in shown), render.JOB_HEADER):
        filtered = args.state or args.type or args.label
        print("no jobs match" if filtered else "no jobs yet", file=sys.stderr)
    return EXIT_OK


def _watch(client: JobControlClient, args: argparse.Namespace) -> int:
    return _follow(client, args.id, as_json=args.json, after_sequence=args.after_sequence)


def _follow(
    client: JobControlClient,
    job_id: str,
    *,
    as_json: bool,
    after_sequence: int | None,
    warned: bool = False,
) -> int:
    """`warned`: the user was already told the job's type is unserved."""
    last = None
    with render.event_view(as_json=as_json) as view:
        events = client.watch(job_id, after_sequence=after_sequence)
        for event, note in _with_notes(events, unserved=warned):
            if note:
                view.note(note)
            view.show(event)
            last = event
    if last is None or not last.job.is_terminal:  # watch() ends on a terminal event or raises
        return EXIT_ERROR
    return _EXIT_FOR_STATE[last.job.state]


def _with_notes(events: Iterable[JobEvent], *, unserved: bool) -> Iterable[tuple[JobEvent, str]]:
    """Each event, with a line for the user when the job becomes unserved (no live
    worker has a handler for its type) or served again. `unserved`: what the user was
    last told."""
    for event in events:
        note = ""
        if event.job.unserved and not unserved:
            note = (
                f"warning: no live worker serves job type {event.job.type!r}; "
                "the job waits until one starts (see `jobctl workers`)"
            )
        elif unserved and not event.job.unserved and not event.job.is_terminal:
            note = f"a live worker serves job type {event.job.type!r} now"
        unserved = event.job.unserved
        yield event, note


def _cancel(client: JobControlClient, args: argparse.Namespace) -> int:
    job = client.cancel(args.id, args.reason)
    if args.json:
        render.dump_json(convert.job_to_json(job))
        return EXIT_OK
    note = " (cancel requested; its worker is stopping it)" if job.cancel_requested else ""
    print(f"{job.id} {job.state}{note}")
    return EXIT_OK


def _retry(client: JobControlClient, args: argparse.Namespace) -> int:
    job = client.retry(args.id)
    if args.json:
        render.dump_json(convert.job_to_json(job))
        return EXIT_OK
    print(f"{job.id} {job.state} (next attempt {job.attempt + 1} of {job.max_attempts})")
    return EXIT_OK


def _workers(client: JobControlClient, args: argparse.Namespace) -> int:
    workers = client.workers(include_stopped=args.all)
    if args.json:
        render.dump_json_array(convert.worker_to_json(worker) for worker in workers)
    elif not render.print_table((render.worker_row(w) for w in workers), render.WORKER_HEADER):
        print("no workers" if args.all else "no live workers", file=sys.stderr)
    return EXIT_OK


def _top(client: JobControlClient, args: argparse.Namespace) -> int:
    if args.rows is not None and args.rows < 1:
        raise _UsageError(f"--rows must be 1 or more, got {args.rows}")
    view = top.TopFilter(states=frozenset(args.state), types=args.type, labels=dict(args.label))
    if args.after_sequence is not None and args.after_sequence < 0:
        raise _UsageError(f"--after-sequence must be 0 or more, got {args.after_sequence}")
    if args.json and args.once:
        raise _UsageError("--once draws the table; --json streams events: choose one")
    if not (args.json or args.once or sys.stdout.isatty()):
        raise _UsageError(
            "top draws on a terminal; elsewhere use --once (the table once) or --json (events)"
        )
    if args.json:
        return top.stream_json(client, view, after_sequence=args.after_sequence)
    return top.run(client, view, rows=args.rows, once=args.once, after_sequence=args.after_sequence)


def _token(args: argparse.Namespace) -> str | None:
    """From --token-file (first line that is not blank or a comment), else the env."""
    path: Path | None = args.token_file
    if path is None:
        return os.environ.get("JOBCONTROL_AUTH_TOKEN") or None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise _UsageError(f"cannot read --token-file: {error}") from None
    for line in lines:
        if line.strip() and not line.lstrip().startswith("#"):
            return line.strip()
    raise _UsageError(f"{path} holds no token")


def _tls(args: argparse.Namespace) -> TlsOptions | None:
    if not (args.tls or args.tls_ca or args.tls_cert or args.tls_key):
        return None
    if (args.tls_cert is None) != (args.tls_key is None):
        raise _UsageError("--tls-cert and --tls-key go together")
    try:
        return TlsOptions.from_files(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key)
    except OSError as error:
        raise _UsageError(f"cannot read a TLS file: {error}") from None


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    run: Command = args.run
    try:
        client = JobControlClient(
            args.addr,
            token=_token(args),
            tls=_tls(args),
            timeout=args.timeout.total_seconds() or None,
            watch_reconnect_timeout=args.watch_reconnect_timeout,
        )
        with client:
            return run(client, args)
    except _UsageError as error:
        p.error(str(error))
    except JobControlError as error:
        print(f"jobctl: {status_name(error)}: {error.message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `jobctl list | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
