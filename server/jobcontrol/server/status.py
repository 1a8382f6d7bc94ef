"""Domain errors to status codes (AIP-193): one table, for gRPC and for HTTP (Connect
and gRPC-Web use the same codes), and one place that turns any error into a status.

Field errors carry google.rpc.BadRequest details, refused job types
google.rpc.PreconditionFailure details. Anything unexpected becomes INTERNAL
with a generic message; the traceback goes to the server log only.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from jobcontrol.errors import (
    AlreadyExists,
    InvalidArgument,
    InvalidTransition,
    JobControlError,
    JobNotFound,
    LeaseLost,
    StoreUnavailable,
    UnservedJobType,
    WorkerNotFound,
)
from jobcontrol.server.admission import Refused

log = logging.getLogger(__name__)

# google.rpc.PreconditionFailure's violation type for a refused job type; its subject is
# the type.
UNSERVED_JOB_TYPE = "UNSERVED_JOB_TYPE"

STATUS_CODES: dict[type[JobControlError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    JobNotFound: grpc.StatusCode.NOT_FOUND,
    WorkerNotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    InvalidTransition: grpc.StatusCode.FAILED_PRECONDITION,
    UnservedJobType: grpc.StatusCode.FAILED_PRECONDITION,
    LeaseLost: grpc.StatusCode.ABORTED,
    StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
}


class CallError(Exception):
    """A reason to end a call with a status that is not a domain error: a request that
    cannot be read, a stream that overflowed, a server shutting down."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def status_code_for(error: JobControlError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        code = STATUS_CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def rich_status(error: JobControlError) -> grpc.Status:
    return rpc_status.to_status(status_message(error))


def status_message(error: JobControlError) -> status_pb2.Status:
    """The error as a google.rpc.Status, with its details; every protocol sends this."""
    code = status_code_for(error)
    details = []
    if isinstance(error, InvalidArgument):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=error.field, description=error.description
                )
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad_request)
        details.append(packed)
    elif isinstance(error, UnservedJobType):
        failure = error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type=UNSERVED_JOB_TYPE,
                    subject=job_type,
                    description="no live worker serves this job type",
                )
                for job_type in error.job_types
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(failure)
        details.append(packed)
    return status_pb2.Status(
        code=getattr(code_pb2, code.name), message=error.message, details=details
    )


def failure_status(method: str, error: Exception) -> status_pb2.Status:
    """The status a call that raised `error` ends with."""
    if isinstance(error, JobControlError):
        if isinstance(error, StoreUnavailable):
            log.warning("%s: %s", method, error.message)
        return status_message(error)
    if isinstance(error, CallError | Refused):
        return status_pb2.Status(code=getattr(code_pb2, error.code.name), message=str(error))
    log.exception("%s failed", method, exc_info=error)
    return status_pb2.Status(code=code_pb2.INTERNAL, message="internal error; see the server log")


def grpc_code(status: status_pb2.Status) -> grpc.StatusCode:
    return _GRPC_CODES[status.code]


_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}


def end_call(
    context: grpc.aio.ServicerContext[Any, Any],
    code: grpc.StatusCode,
    details: str,
    trailing_metadata: tuple[tuple[str, str | bytes], ...] = (),
) -> None:
    """Set the status the call ends with; the handler then returns None.

    Not `context.abort`: grpcio keeps the exception it raises on the call, and that
    exception's traceback holds every frame of the handler, the request included, in a
    reference cycle that lives until the next full garbage collection. A burst of large
    rejected requests would pile up that way.
    """
    context.set_code(code)
    context.set_details(details)
    if trailing_metadata:
        context.set_trailing_metadata(trailing_metadata)
