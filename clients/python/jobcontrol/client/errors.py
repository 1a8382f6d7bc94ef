"""gRPC statuses back into the typed errors of `jobcontrol.errors`.

The server maps each domain error to one status code (AIP-193); this is the inverse, so
client code catches the same classes the server raised: `JobNotFound`,
`InvalidArgument` (with the field named in the google.rpc.BadRequest details),
`AlreadyExists`, `InvalidTransition`. Statuses that only exist between client and
server get their own classes here. The gRPC error stays attached as `__cause__`;
`status_name` reads it for messages such as jobctl's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from jobcontrol.errors import (
    AlreadyExists,
    InvalidArgument,
    InvalidTransition,
    JobControlError,
    JobNotFound,
    StoreUnavailable,
)

_DETAILS_KEY = "grpc-status-details-bin"


class Unauthenticated(JobControlError):
    """The server needs a valid bearer token (pass token=, or set JOBCONTROL_AUTH_TOKEN
    for jobctl)."""


class Unavailable(StoreUnavailable):
    """The server, or the store behind it, cannot be reached right now; retry later."""


class DeadlineExceeded(JobControlError):
    """The call did not finish within its deadline."""


class RpcFailed(JobControlError):
    """The server failed the call with a status this client has no class for."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message or f"the call failed with {code.name}")
        self.code = code


def error_from_rpc(error: grpc.RpcError, *, job_id: str | None = None) -> JobControlError:
    """The typed error for a failed call. `job_id` names the job the call was about, for
    `JobNotFound.job_id`; the message is always the server's own."""
    code = error.code()
    message = error.details() or ""
    mapped: JobControlError
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        field, description = _field_violation(error.trailing_metadata()) or ("", message)
        mapped = InvalidArgument(field, description)
    elif code is grpc.StatusCode.NOT_FOUND:
        mapped = JobNotFound(job_id or "")
    elif code is grpc.StatusCode.ALREADY_EXISTS:
        mapped = AlreadyExists(message)
    elif code is grpc.StatusCode.FAILED_PRECONDITION:
        mapped = InvalidTransition(message)
    elif code is grpc.StatusCode.UNAUTHENTICATED:
        mapped = Unauthenticated(message)
    elif code is grpc.StatusCode.UNAVAILABLE:
        mapped = Unavailable(message)
    elif code is grpc.StatusCode.DEADLINE_EXCEEDED:
        mapped = DeadlineExceeded(message)
    else:
        mapped = RpcFailed(code, message)
    if message:
        mapped.args = (message,)  # the server's words, not the class's default
    return mapped


def status_name(error: BaseException) -> str:
    """The gRPC status behind an error raised by the client, e.g. "NOT_FOUND".

    Errors the client raises before sending anything (a request it can tell is invalid)
    have no status of their own and are named as the server would name them."""
    cause = error.__cause__
    if isinstance(cause, grpc.RpcError):
        return cause.code().name
    if isinstance(error, RpcFailed):
        return error.code.name
    if isinstance(error, InvalidArgument):
        return grpc.StatusCode.INVALID_ARGUMENT.name
    return grpc.StatusCode.UNKNOWN.name


def _field_violation(metadata: Iterable[Any] | None) -> tuple[str, str] | None:
    """The first google.rpc.BadRequest field violation in the trailing metadata."""
    for key, value in metadata or ():
        if key != _DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                for violation in bad_request.field_violations:
                    return violation.field, violation.description
    return None
