"""One table maps every domain error to a gRPC status code."""

from __future__ import annotations

import grpc

from jobcontrol import errors
from jobcontrol.errors import InvalidArgument, JobControlError
from jobcontrol.server.status import STATUS_CODES, rich_status


def _all_subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_all_subclasses(sub)}
    return found


def test_every_domain_error_has_a_status_code():
    domain_errors = {
        cls for cls in _all_subclasses(JobControlError) if cls.__module__ == errors.__name__
    }
    assert domain_errors
    assert domain_errors <= set(STATUS_CODES)
    assert grpc.StatusCode.INTERNAL not in STATUS_CODES.values()


def test_invalid_argument_carries_bad_request_details():
    status = rich_status(InvalidArgument("priority", "must be between 0 and 1000, got -5"))
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    assert status.details == "priority: must be between 0 and 1000, got -5"
    assert any(key == "grpc-status-details-bin" for key, _ in status.trailing_metadata)
