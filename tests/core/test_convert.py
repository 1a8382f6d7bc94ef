"""Conversion to protobuf gives the values protobuf's own helpers give."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from google.protobuf import struct_pb2, timestamp_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from jobcontrol import convert
from jobcontrol.jobs import EventKind, Job, JobEvent, JobState

ZONES = st.one_of(
    st.none(),
    st.just(UTC),
    st.integers(min_value=-23 * 60, max_value=23 * 60).map(
        lambda minutes: timezone(timedelta(minutes=minutes))
    ),
)
# Two days inside datetime's range, so a zone's offset never leaves Timestamp's range.
TIMES = st.datetimes(min_value=datetime(1, 1, 3), max_value=datetime(9999, 12, 29), timezones=ZONES)


@settings(database=None, max_examples=500)
@given(TIMES)
def test_timestamps_match_from_datetime_for_aware_and_naive_times(value: datetime):
    expected = timestamp_pb2.Timestamp()
    expected.FromDatetime(value)
    assert convert.event_to_proto(_event_at(value)).time == expected


def test_timestamps_before_the_epoch_keep_nanos_positive():
    value = datetime(1969, 12, 31, 23, 59, 59, 250_000, tzinfo=UTC)
    assert convert.event_to_proto(_event_at(value)).time == timestamp_pb2.Timestamp(
        seconds=-1, nanos=250_000_000
    )


def _event_at(value: datetime) -> JobEvent:
    job = Job(
        id="j1",
        type="t",
        payload={},
        state=JobState.PENDING,
        priority=0,
        labels={},
        attempt=0,
        max_attempts=3,
        create_time=value,
        update_time=value,
        run_after=value,
    )
    return JobEvent(sequence=1, kind=EventKind.SUBMITTED, time=value, job=job)


def test_whole_numbers_in_a_submitted_payload_reach_the_handler_as_ints():
    """A Struct holds only doubles; a handler doing `range(payload["steps"])` needs an int."""
    message = struct_pb2.Struct()
    message.update({"steps": 4, "nested": [1, 2.5, {"bytes": 160514}], "huge": 2.0**60})
    payload = convert.struct_to_dict(message, field="payload")
    assert payload["steps"] == 4
    assert type(payload["steps"]) is int
    assert type(payload["nested"][0]) is int
    assert payload["nested"][1] == 2.5
    assert type(payload["nested"][2]["bytes"]) is int
    assert type(payload["huge"]) is float, "past 2**53 a double is not an exact integer"
