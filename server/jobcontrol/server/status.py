"""Domain errors to gRPC status codes (AIP-193): one table, one place that ends a
call with an error.

Field errors carry google.rpc.BadRequest details, refused job types
google.rpc.PreconditionFailure details. Anything unexpected becomes INTERNAL
with a generic message; the traceback goes to the server log only.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

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
from jobcontrol.server.metrics import Metrics

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


class StreamEnded(Exception):
    """A server-side reason to end a stream with a status (overflow, shutdown)."""

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
    message = status_pb2.Status(
        code=getattr(code_pb2, code.name), message=error.message, details=details
    )
    return rpc_status.to_status(message)


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


Handler = Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
StreamHandler = Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]
H = TypeVar("H", bound=Handler)
S = TypeVar("S", bound=StreamHandler)


def _outcome(error: BaseException | None) -> grpc.StatusCode:
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, JobControlError):
        return status_code_for(error)
    if isinstance(error, StreamEnded):
        return error.code
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.INTERNAL


def _fail(context: grpc.aio.ServicerContext[Any, Any], method: str, error: Exception) -> None:
    if isinstance(error, JobControlError):
        if isinstance(error, StoreUnavailable):
            log.warning("%s: %s", method, error.message)
        status = rich_status(error)
        end_call(context, status.code, status.details, status.trailing_metadata)
    elif isinstance(error, StreamEnded):
        end_call(context, error.code, str(error))
    else:
        log.exception("%s failed", method, exc_info=error)
        end_call(context, grpc.StatusCode.INTERNAL, "internal error; see the server log")


class HasMetrics(Protocol):
    metrics: Metrics


def unary(fn: H) -> H:
    """Wrap a unary RPC: map domain errors to statuses and record the outcome."""
    method = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: HasMetrics, request: Any, context: Any) -> Any:
        metrics = self.metrics
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            return await fn(self, request, context)
        except Exception as caught:
            error = caught
            _fail(context, method, caught)
            return None
        except BaseException as caught:
            error = caught
            raise
        finally:
            metrics.observe_rpc(method, _outcome(error), time.perf_counter() - started)
            error = None  # its traceback holds this frame, which holds the request

    return wrapper  # type: ignore[return-value]


def streaming(fn: S) -> S:
    """Wrap a server-streaming RPC the same way; counts it as an open stream meanwhile."""
    method = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: HasMetrics, request: Any, context: Any) -> AsyncIterator[Any]:
        metrics = self.metrics
        started = time.perf_counter()
        error: BaseException | None = None
        metrics.open_streams.labels(method).inc()
        try:
            async for message in fn(self, request, context):
                yield message
        except Exception as caught:
            error = caught
            _fail(context, method, caught)
        except BaseException as caught:
            error = caught
            raise
        finally:
            metrics.open_streams.labels(method).dec()
            metrics.observe_rpc(method, _outcome(error), time.perf_counter() - started)
            error = None

    return wrapper  # type: ignore[return-value]
