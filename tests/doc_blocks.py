"""The code blocks of a Markdown document, and one way to run them as a reader would.

Every ```sh or ```python block is followed by a comment saying what becomes of it:

- `<!-- expect: key=value ... -->`: a checked example. The words are shell-quoted
  (`contains="a b"`) and a key may repeat; each document's test says which keys it
  reads (tests/test_docs.py for the README, docs/ops.md and docs/job-types.md;
  tests/test_cluster.py for the README blocks marked `run=cluster`).
- `<!-- not run: why -->`: shown, never run (it installs things, runs until Ctrl-C, or
  needs a machine of its own). The reason is required.
- `<!-- file: PATH -->`: a file of the reader's own project (a handler module, its
  tests), written to PATH in a project folder that later blocks marked `run=project`
  run in. PATH is relative and stays inside that folder.

tests/test_docs.py fails on a runnable block with none of these, so no example escapes.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

# Languages whose blocks are commands or programs a reader may paste.
SHELL = frozenset({"sh", "bash", "shell", "console"})
PYTHON = frozenset({"python", "py"})
RUNNABLE = SHELL | PYTHON

_BLOCK = re.compile(
    r"^```(?P<info>[^\n`]*)\n(?P<code>.*?)^```[ \t]*\n"
    r"(?:\s*<!--\s*(?:expect:(?P<expect>.*?)|not run:(?P<not_run>.*?)|file:(?P<file>.*?))-->)?",
    re.M | re.S,
)


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the first line of code
    lang: str
    code: str
    expect: str | None
    not_run: str | None = None
    file: str | None = None

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"

    @property
    def runnable(self) -> bool:
        return self.lang in RUNNABLE

    @property
    def marked(self) -> bool:
        """Run, written as a project file, or said not to run."""
        return self.expect is not None or self.not_run is not None or self.file is not None

    def write_into(self, folder: Path) -> Path:
        """Write the block to its `file:` path inside `folder`; returns that path."""
        assert self.file, f"{self.where} has no file comment"
        path = (folder / self.file).resolve()
        assert path.is_relative_to(folder.resolve()), f"{self.where}: {self.file} leaves the folder"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.code, encoding="utf-8")
        return path

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
    """Every fenced block of the document, in order, with the comment that follows it."""
    text = path.read_text(encoding="utf-8")
    found = []
    for m in _BLOCK.finditer(text):
        info = m.group("info").strip()
        not_run, file = m.group("not_run"), m.group("file")
        found.append(
            Block(
                path=path,
                line=text.count("\n", 0, m.start()) + 2,
                lang=info.split()[0] if info else "",
                code=m.group("code"),
                expect=m.group("expect"),
                not_run=None if not_run is None else not_run.strip(),
                file=None if file is None else file.strip(),
            )
        )
    return found


# ---- running blocks --------------------------------------------------------------------


@dataclass(frozen=True)
class Ran:
    """How a block ended: its exit code (None: it ran past its timeout) and everything
    it printed, stdout and stderr interleaved as a terminal shows them."""

    exit_code: int | None
    output: str


class ShellSession:
    """One bash, fed blocks one after another as a reader pastes them into a terminal:
    variables and the working directory carry over from block to block.

    It runs under `set -euo pipefail`, so a failing command ends the session and its
    exit code is the block's; a block that gets to its end exits 0. Blocks read no
    stdin (it is /dev/null). Closing the session kills whatever it left running.
    """

    def __init__(self, *, cwd: Path, env: Mapping[str, str]) -> None:
        self._scripts = tempfile.TemporaryDirectory(prefix="doc-blocks-")
        self._process = subprocess.Popen(
            ["bash", "--noprofile", "--norc", "-euo", "pipefail", "-s"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env),
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._count = 0
        self._token = secrets.token_hex(8)

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def run(self, code: str, *, timeout: float = 120.0) -> Ran:
        if self._process.poll() is not None:
            return Ran(self._process.returncode, "(the session had already ended)\n")
        self._count += 1
        script = Path(self._scripts.name) / f"block-{self._count}.sh"
        script.write_text(code, encoding="utf-8")
        marker = f"-- block {self._count} done {self._token} --"
        assert self._process.stdin is not None
        # A block that fails at once ends the shell before it reads the marker line.
        with contextlib.suppress(BrokenPipeError):
            self._process.stdin.write(
                f"source {shlex.quote(str(script))} </dev/null\necho {shlex.quote(marker)}\n"
            )
            self._process.stdin.flush()
        output: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.close()
                return Ran(None, "".join(output))
            if line is None:  # the shell ended: a command failed
                return Ran(self._process.wait(timeout=10), "".join(output))
            if line.rstrip("\n").endswith(marker):
                output.append(line.rstrip("\n")[: -len(marker)])
                return Ran(0, "".join(output))
            output.append(line)

    def close(self) -> None:
        """End the shell and everything it started (its process group)."""
        if self._process.stdin is not None and not self._process.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self._process.stdin.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait(timeout=10)
        self._reader.join(timeout=10)
        if self._process.stdout is not None:
            self._process.stdout.close()
        self._scripts.cleanup()

    def __enter__(self) -> ShellSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def run_python(
    code: str, *, cwd: Path, env: Mapping[str, str], name: str, timeout: float = 120.0
) -> Ran:
    """A Python block as a program of its own, with the interpreter running the tests
    (the project's virtualenv)."""
    with tempfile.TemporaryDirectory(prefix="doc-blocks-") as scripts:
        script = Path(scripts) / f"{name}.py"
        script.write_text(code, encoding="utf-8")
        try:
            result = subprocess.run(
                [sys.executable, str(script)],
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as expired:
            printed = expired.output or ""
            return Ran(None, printed if isinstance(printed, str) else printed.decode())
    return Ran(result.returncode, result.stdout)


def check(block: Block, ran: Ran, *, exit_code: int = 0) -> None:
    """The block ended with `exit_code` and printed what its expect comment says:
    every `contains=` text, and a line matching each `match=` pattern."""
    expected = block.expectations()
    said = f"{block.where} exited {ran.exit_code} (expected {exit_code}):\n{ran.output}"
    assert ran.exit_code == exit_code, said
    for text in expected.get("contains", []):
        assert text in ran.output, f"{block.where}: {text!r} not in:\n{ran.output}"
    for pattern in expected.get("match", []):
        assert re.search(pattern, ran.output, re.M), (
            f"{block.where}: no {pattern!r} in:\n{ran.output}"
        )


# ---- links -----------------------------------------------------------------------------

_FENCE = re.compile(r"^```.*?^```[ \t]*$", re.M | re.S)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^#{1,6}[ \t]+(?P<title>.+?)[ \t]*#*[ \t]*$", re.M)


def prose(text: str) -> str:
    """The document without its code: links and headings are looked for only here."""
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def links(path: Path) -> list[str]:
    """The targets of the document's Markdown links, in order."""
    return [m.group("target") for m in _LINK.finditer(prose(path.read_text(encoding="utf-8")))]


def anchors(path: Path) -> set[str]:
    """The anchors GitHub makes for the document's headings: lowercased, punctuation
    dropped but for '-' and '_', spaces made '-'; a repeated one gets -1, -2, ..."""
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    found = set()
    for m in _HEADING.finditer(text):
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group("title"))
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found
