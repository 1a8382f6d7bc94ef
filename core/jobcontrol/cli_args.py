"""argparse pieces shared by `jobcontrol-server` and `jobcontrol-worker`, so their help
and their usage errors read alike."""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import NoReturn

from jobcontrol.durations import format_duration


class HelpFormatter(argparse.HelpFormatter):
    """Each option's default after its help, spelled as the option takes it (`7d`, not
    `7 days, 0:00:00`); none where there is no default or the help already states it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or default is None
            or default is False
            or default == ""
            or default == argparse.SUPPRESS
            or "default" in text
        ):
            return text
        shown = format_duration(default) if isinstance(default, timedelta) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line naming the problem, not the whole usage block."""
        self.exit(2, f"{self.prog}: {message}\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
