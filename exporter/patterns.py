"""Command-line regular expressions: compiled and matched with RE2, in linear time.

Python's `re` backtracks and holds the interpreter lock for the whole match: one process
with a long or crafted command line could freeze every scrape and /healthz. RE2 (the
engine of the Go exporters) runs in time linear in the text, and refuses what it cannot
run that way (back-references, look-arounds). Only the first CMDLINE_LIMIT bytes of a
command line are matched, so the cost of one process is bounded whatever it holds.

Every part of the exporter that matches command lines (process groups, apps) uses
compile_pattern() and matches(), so they all behave alike.
"""

from __future__ import annotations

import re2

# The first 16 KiB of a command line: the program and its leading arguments, where the
# names a pattern looks for are. A process may have up to ARG_MAX (2 MiB on Linux and
# 1 MiB on macOS) of arguments.
CMDLINE_LIMIT = 16 * 1024
# RE2's memory budget for one compiled pattern (its default): a pattern larger than that
# is refused when it is compiled, not at a scrape.
MAX_MEMORY = 8 << 20


class PatternError(ValueError):
    """A pattern RE2 cannot run, with RE2's reason."""


class Pattern:
    """A compiled command-line pattern; `source` is the text it was written as."""

    __slots__ = ("source", "_regexp")

    def __init__(self, source: str, regexp) -> None:
        self.source, self._regexp = source, regexp

    def search(self, cmdline: str | bytes) -> bool:
        return matches(self, cmdline)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pattern) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)

    def __repr__(self) -> str:
        return f"Pattern({self.source!r})"


def compile_pattern(source: str) -> Pattern:
    """RE2 syntax (as Prometheus and the Go exporters): no back-references, no look-arounds."""
    options = re2.Options()
    options.log_errors = False  # the reason goes into the error, not to stderr
    options.max_mem = MAX_MEMORY
    try:
        return Pattern(source, re2.compile(source.encode("utf-8", "surrogateescape"), options))
    except re2.error as exc:
        reason = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise PatternError(f"{reason} (RE2 syntax, matched in linear time: no back-references or look-arounds)") from None
    except UnicodeEncodeError:
        raise PatternError("not UTF-8 text") from None


def matches(pattern: Pattern, cmdline: str | bytes) -> bool:
    """Whether the pattern occurs in the first CMDLINE_LIMIT bytes of a command line:
    a str (arguments joined with spaces) or the raw bytes of /proc/PID/cmdline
    (arguments ended by NULs, read as spaces)."""
    if isinstance(cmdline, str):
        cmdline = cmdline.encode("utf-8", "surrogateescape")
    text = cmdline[:CMDLINE_LIMIT]
    if text.endswith(b"\0"):
        text = text[:-1]
    return pattern._regexp.search(text.replace(b"\0", b" ")) is not None


def span(pattern: Pattern, cmdline: str) -> tuple[int, int] | None:
    """Where the pattern first occurs in a command line (arguments joined with spaces), as
    byte offsets of its UTF-8 text; None where it does not (within CMDLINE_LIMIT bytes)."""
    match = pattern._regexp.search(cmdline.encode("utf-8", "surrogateescape")[:CMDLINE_LIMIT])
    return match.span() if match is not None else None
