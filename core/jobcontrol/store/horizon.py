"""SettledSequence: how far a reader of the event feed may go on a store whose events
can commit out of sequence order (PostgreSQL).

Every writer of events holds the event lock, shared, from before it draws its first
sequence until it has committed or rolled back. A look at the feed reads the last
sequence drawn, then the transactions holding the lock. Any sequence up to that value
was drawn by a transaction that had ended by then (its event is readable, or never will
be) or by one of those holders. So once none of them holds the lock any more, every
sequence up to the value is settled, and a reader that goes only that far never moves
past an event still in flight. A look that finds holders leaves a checkpoint; a later
look that finds none of its holders settles it. Reading never waits for a writer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection

# Checkpoints kept at most: beyond this the two oldest merge into one that settles when
# both would have (later, never sooner), so a writer that stays open keeps memory bounded.
MAX_CHECKPOINTS = 64


@dataclasses.dataclass(frozen=True, slots=True)
class _Checkpoint:
    drawn: int
    writers: frozenset[str]


class SettledSequence:
    """One per store: its readers share what each look learned. `observe` records a
    look; `peek` says what it would settle without recording it, for an operation that
    may yet run again. Looks must be recorded in the order they were taken: an older
    one, recorded after a newer, would drop a writer that took the lock in between from
    the newer one's checkpoint."""

    def __init__(self) -> None:
        self._settled = 0
        self._known = False
        self._checkpoints: tuple[_Checkpoint, ...] = ()

    @property
    def known(self) -> bool:
        """Whether a look has settled anything yet: until then 0 says nothing."""
        return self._known

    def peek(self, drawn: int, writers: Collection[str]) -> int:
        return self._after(drawn, writers)[0]

    def observe(self, drawn: int, writers: Collection[str]) -> int:
        """Record a look (`drawn` read before `writers`); the settled sequence after it."""
        settled, known, checkpoints = self._after(drawn, writers)
        self._settled, self._known, self._checkpoints = settled, known, checkpoints
        return settled

    def _after(
        self, drawn: int, writers: Collection[str]
    ) -> tuple[int, bool, tuple[_Checkpoint, ...]]:
        holding = frozenset(writers)
        settled, known = self._settled, self._known
        kept: list[_Checkpoint] = []
        for checkpoint in self._checkpoints:
            # Its writers that no longer hold the lock have ended: it waits for the rest.
            waiting_for = checkpoint.writers & holding
            if waiting_for:
                kept.append(_Checkpoint(checkpoint.drawn, waiting_for))
            else:
                settled, known = max(settled, checkpoint.drawn), True
        if not holding:
            return max(settled, drawn), True, ()
        if drawn > settled and all(c.drawn < drawn for c in kept):
            kept.append(_Checkpoint(drawn, holding))
        if len(kept) > MAX_CHECKPOINTS:
            oldest, older = kept[0], kept[1]
            kept[:2] = [_Checkpoint(older.drawn, oldest.writers | older.writers)]
        return settled, known, tuple(kept)
