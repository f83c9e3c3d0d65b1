"""Shorten every duration of a Prometheus rule file, for end-to-end tests.

The rules in prometheus/rules/ speak in minutes and hours (`for: 10m`, a heap baseline
over `[10m]`, its growth `offset 30m`, a trend `predict_linear(...[30m], 3600)`). A test
that runs them in a real Prometheus cannot wait that long, so it loads a copy in which
every duration is multiplied by one factor (1/60 turns minutes into seconds). Scaling
all of them together keeps the rules' logic unchanged: a window still spans the same
number of scrapes and evaluations, if the scrape and evaluation intervals are scaled by
the same factor too.

What `shorten(rule_text, factor)` scales (the rule files write every duration as such a
literal, so a text rewrite reaches all of them):

- the value of a `for:`, `keep_firing_for:` or `interval:` key (a line of its own);
- range selectors `[10m]` and subquery ranges `[30m:1m]` (both durations);
- `offset 30m` (and negative offsets);
- the horizon of `predict_linear(v[30m], 3600)`: the plain number of seconds written
  right after the range selector.

A scaled duration is rounded to whole milliseconds, at least 1ms, and written in one
unit (`10s`, `1500ms`); a scaled horizon is written as a plain number of seconds.
PromQL inside annotation templates (`query` calls) is scaled the same way. Nothing
else changes: names, labels, thresholds and the annotations' words ("for 10 minutes")
keep their text.

Not in the rule files, so for the test to scale itself: the scrape and evaluation
intervals (prometheus.yml or flags) and Prometheus's lookback delta
(`--query.lookback-delta`, 5m), after which a series that stopped being scraped
without a staleness marker disappears.

tests/test_rules.py checks that rules shortened 60 times pass the very unit tests of
prometheus/tests/ with their intervals and evaluation times shortened alike.
"""

from __future__ import annotations

import re

__all__ = ["shorten", "parse_duration", "format_duration"]

_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000, "y": 31_536_000_000}
# A Prometheus duration: one or more <number><unit>, units from the largest down.
_DURATION = r"(?:\d+(?:ms|[smhdwy]))+"
_DURATION_PART = re.compile(r"(\d+)(ms|[smhdwy])")

_KEY_LINE = re.compile(
    r"^(?P<head>[ \t]*(?:-[ \t]+)?(?:for|keep_firing_for|interval):[ \t]*)(?P<q>[\"']?)(?P<d>" + _DURATION + r")(?P=q)(?P<tail>[ \t]*(?:#.*)?)$",
    re.MULTILINE,
)
_RANGE = re.compile(r"\[(?P<s1>\s*)(?P<range>" + _DURATION + r")(?P<s2>\s*)(?::(?P<s3>\s*)(?P<step>" + _DURATION + r")?(?P<s4>\s*))?\]")
_OFFSET = re.compile(r"\b(?P<head>offset\s+)(?P<sign>-?)(?P<d>" + _DURATION + r")\b")
_PREDICT_HORIZON = re.compile(
    r"(?P<head>predict_linear\s*\((?:[^()\[\]]|\([^()]*\))*\[[^\]]*\]\s*,\s*)(?P<n>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)(?P<tail>\s*\))"
)


def parse_duration(text: str) -> int:
    """A Prometheus duration (`1h30m`, `90s`, `500ms`) in milliseconds."""
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * _UNIT_MS[u] for n, u in parts)


def format_duration(ms: int) -> str:
    """Milliseconds as a one-unit Prometheus duration: whole seconds as `Ns`, else `Nms`."""
    ms = max(1, int(ms))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def _scale(text: str, factor: float) -> str:
    return format_duration(round(parse_duration(text) * factor))


def _format_seconds(value: float) -> str:
    return f"{value:.6g}" if value != int(value) else str(int(value))


def shorten(rule_text: str, factor: float) -> str:
    """Return `rule_text` (a Prometheus rule file) with every duration multiplied by `factor`.

    See the module docstring for what counts as a duration. `factor` must be positive;
    0.0166... (1/60) turns `for: 10m` into `for: 10s`, `[30m]` into `[30s]`, `offset 30m`
    into `offset 30s` and `predict_linear(v[30m], 3600)` into `predict_linear(v[30s], 60)`.
    """
    if not factor > 0:
        raise ValueError("factor must be positive")

    def key_line(m: re.Match) -> str:
        return f"{m['head']}{m['q']}{_scale(m['d'], factor)}{m['q']}{m['tail']}"

    def range_sel(m: re.Match) -> str:
        out = f"[{m['s1']}{_scale(m['range'], factor)}{m['s2']}"
        if m.group(0).find(":") >= 0:
            step = _scale(m["step"], factor) if m["step"] else ""
            out += f":{m['s3'] or ''}{step}{m['s4'] or ''}"
        return out + "]"

    def offset(m: re.Match) -> str:
        return f"{m['head']}{m['sign']}{_scale(m['d'], factor)}"

    def horizon(m: re.Match) -> str:
        return f"{m['head']}{_format_seconds(float(m['n']) * factor)}{m['tail']}"

    # The horizon first: its range selector is rewritten afterwards like any other.
    text = _PREDICT_HORIZON.sub(horizon, rule_text)
    text = _KEY_LINE.sub(key_line, text)
    text = _RANGE.sub(range_sel, text)
    text = _OFFSET.sub(offset, text)
    return text
