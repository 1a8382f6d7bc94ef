"""The shell examples of a Markdown document, for the tests that run them as written.

A ```sh block may be followed by `<!-- expect: key=value ... -->`, which says how to
run it and what it must print; the words are shell-quoted (`contains="a b"`), and a key
may repeat. docs/ops.md (tests/clients/test_ops_doc.py) and the README's cluster
section (tests/test_cluster.py) share this form."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

_BLOCK = re.compile(
    r"^```sh\n(?P<code>.*?)^```\n(?:\s*<!--\s*expect:(?P<expect>.*?)-->)?", re.M | re.S
)


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the first line of code
    code: str
    expect: str | None

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"

    def expectations(self) -> dict[str, list[str]]:
        """The expect comment's words as {key: [value, ...]}, in order."""
        assert self.expect is not None, f"{self.where} has no expect comment"
        found: dict[str, list[str]] = {}
        for word in shlex.split(self.expect):
            key, sep, value = word.partition("=")
            assert sep, f"{self.where}: {word!r} is not key=value"
            found.setdefault(key, []).append(value)
        return found


def blocks(path: Path) -> list[Block]:
    text = path.read_text(encoding="utf-8")
    return [
        Block(path, text.count("\n", 0, m.start()) + 2, m.group("code"), m.group("expect"))
        for m in _BLOCK.finditer(text)
    ]
