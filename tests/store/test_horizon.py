"""SettledSequence on its own: each look is (last sequence drawn, writers holding the
event lock then), as PostgreSQL's EVENT_HORIZON reports it; the PostgreSQL tests
(test_postgres.py) drive it with real transactions."""

from __future__ import annotations

from jobcontrol.store.horizon import MAX_CHECKPOINTS, SettledSequence


def test_a_look_without_writers_settles_everything_drawn():
    settled = SettledSequence()
    assert not settled.known
    assert settled.observe(7, []) == 7
    assert settled.known


def test_a_look_with_writers_settles_only_once_they_have_all_ended():
    settled = SettledSequence()
    settled.observe(5, [])
    assert settled.observe(9, ["3/10", "4/20"]) == 5
    assert settled.observe(12, ["4/20", "5/30"]) == 5  # 4/20 may still hold 6 to 9
    assert settled.observe(12, ["5/30", "6/40"]) == 9  # only writers newer than 9 hold
    assert settled.observe(12, []) == 12


def test_a_writer_that_took_the_lock_after_a_look_does_not_hold_that_look_back():
    settled = SettledSequence()
    settled.observe(5, [])
    settled.observe(9, ["3/10"])
    # 3/10 ended; 7/70 took the lock since (its sequences are past 9).
    assert settled.observe(9, ["7/70"]) == 9


def test_a_first_look_with_writers_in_flight_says_nothing_yet():
    settled = SettledSequence()
    assert settled.observe(9, ["3/10"]) == 0
    assert not settled.known
    assert settled.observe(11, ["8/80"]) == 9
    assert settled.known


def test_peek_records_nothing():
    settled = SettledSequence()
    settled.observe(5, [])
    settled.observe(9, ["3/10"])
    assert settled.peek(10, []) == 10
    assert settled.peek(10, ["3/10"]) == 5
    assert settled.observe(10, ["3/10"]) == 5


def test_a_writer_that_stays_open_keeps_a_bounded_number_of_checkpoints():
    settled = SettledSequence()
    settled.observe(1, [])
    for drawn in range(2, 10 * MAX_CHECKPOINTS):
        assert settled.observe(drawn, ["1/1", f"2/{drawn}"]) == 1
    assert len(settled._checkpoints) <= MAX_CHECKPOINTS
    last = 10 * MAX_CHECKPOINTS - 1
    assert settled.observe(last, ["3/3"]) == last  # everything up to it has ended
