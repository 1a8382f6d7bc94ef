"""Ids are UUIDv7, strictly increasing within a process, and malformed ones are refused."""

from __future__ import annotations

import uuid

import pytest

from jobcontrol.errors import InvalidArgument
from jobcontrol.ids import new_id, parse_id


def test_ids_are_uuid7_and_strictly_increasing():
    ids = [new_id() for _ in range(20_000)]
    assert ids == sorted(set(ids))
    parsed = uuid.UUID(ids[0])
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122


def test_parse_id_accepts_canonical_and_upper_case():
    value = new_id()
    assert parse_id(value.upper()) == value


@pytest.mark.parametrize("bad", ["", "abc", "{" + "0" * 34 + "}", "g" * 36])
def test_parse_id_refuses_malformed_values(bad: str):
    with pytest.raises(InvalidArgument) as caught:
        parse_id(bad)
    assert caught.value.field == "job_id"


@pytest.mark.parametrize(
    "spelling",
    [
        " 0190c6f2-0000-7000-8000-000000000000"[:36],
        "\u0660190c6f2-0000-7000-8000-00000000000",
        "urn:uuid:0190c6f2-0000-7000-8000-0000",
    ],
)
def test_parse_id_refuses_other_spellings_of_a_uuid(spelling: str):
    with pytest.raises(InvalidArgument):
        parse_id(spelling)
