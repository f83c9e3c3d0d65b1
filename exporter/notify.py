"""Desktop notifications for `aitools-exporter receive`.

macOS: terminal-notifier when it is installed, else `osascript -e 'display notification ...'`.
Linux: the freedesktop notification service through `notify-send`. A session without a
desktop (a server: no DISPLAY, WAYLAND_DISPLAY or D-Bus session bus) gets log lines instead,
and the log says so once.

The text comes from the alerts, that is from outside: it is only ever one element of a
fixed argument list (never a shell), and for osascript it is escaped into an AppleScript
string literal.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# Tests (and a user who knows better) force the platform: darwin or linux.
PLATFORM_ENV = "AITOOLS_PLATFORM"
COMMAND_TIMEOUT_SECONDS = 10.0
MAX_TITLE_CHARS = 120
MAX_BODY_CHARS = 600
# Control characters (newlines and tabs aside) and the bidirectional overrides that could make
# a notification read differently from what it says.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u202a-\u202e\u2066-\u2069]")


def current_platform() -> str:
    """'darwin', 'linux' or another sys.platform value; AITOOLS_PLATFORM overrides it."""
    forced = os.environ.get(PLATFORM_ENV, "").strip().lower()
    return forced or sys.platform


@dataclass(frozen=True)
class Notification:
    title: str     # e.g. "Firing: AitoolsDuplicateService"
    subtitle: str  # the summary
    body: str      # the figure, and the command (done, would be done, or to run)
    urgent: bool = False


def clean(text: str, limit: int) -> str:
    """One notification's text: no control characters but newlines, at most `limit` characters."""
    text = _CONTROL.sub(" ", text.replace("\r\n", "\n")).strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def applescript_string(text: str) -> str:
    """`text` as an AppleScript string literal: quotes and backslashes escaped, newlines as \\n."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def _no_leading_dash(text: str) -> str:
    # An argument starting with '-' could be read as an option by the notifier.
    return text if not text.startswith("-") else "\u2011" + text[1:]


def _markup_escaped(text: str) -> str:
    # notify-send bodies may be read as markup (freedesktop body-markup): & < > are entities.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class Notifier:
    """Shows notifications on this platform's desktop, or logs them where there is none."""

    def __init__(self, platform: str | None = None, env: dict[str, str] | None = None):
        self.platform = platform or current_platform()
        self.env = dict(os.environ if env is None else env)
        self._said_no_desktop = False

    def command(self, note: Notification) -> list[str] | None:
        """The argv that shows `note`, or None where this session has no desktop."""
        title = clean(note.title, MAX_TITLE_CHARS)
        subtitle = clean(note.subtitle, MAX_TITLE_CHARS)
        body = clean(note.body, MAX_BODY_CHARS)
        path = self.env.get("PATH")
        if self.platform == "darwin":
            terminal_notifier = shutil.which("terminal-notifier", path=path)
            if terminal_notifier:
                return [terminal_notifier, "-title", _no_leading_dash(title), "-subtitle", _no_leading_dash(subtitle),
                        "-message", _no_leading_dash(body.replace("\n", " · ")), "-group", "aitools-" + title[:60]]
            osascript = shutil.which("osascript", path=path) or "/usr/bin/osascript"
            script = (f"display notification {applescript_string(body)} with title {applescript_string(title)}"
                      f" subtitle {applescript_string(subtitle)}")
            return [osascript, "-e", script]
        if self.platform.startswith("linux") or self.platform.startswith("freebsd"):
            if not self.has_desktop():
                return None
            notify_send = shutil.which("notify-send", path=path)
            if notify_send is None:
                return None
            return [notify_send, "--app-name=aitools", f"--urgency={'critical' if note.urgent else 'normal'}",
                    "--", _no_leading_dash(f"{title}: {subtitle}"), _markup_escaped(body)]
        return None

    def has_desktop(self) -> bool:
        if self.platform == "darwin":
            return True
        if not (self.env.get("DISPLAY") or self.env.get("WAYLAND_DISPLAY")):
            return False
        if self.env.get("DBUS_SESSION_BUS_ADDRESS"):
            return True
        runtime = self.env.get("XDG_RUNTIME_DIR")
        return bool(runtime) and Path(runtime, "bus").exists()

    def show(self, note: Notification) -> str:
        """Show it: 'ok', 'error' (the notifier failed) or 'logged' (no desktop here)."""
        argv = self.command(note)
        if argv is None:
            if not self._said_no_desktop:
                self._said_no_desktop = True
                reason = ("no desktop session (no DISPLAY/WAYLAND_DISPLAY and D-Bus session bus)"
                          if not self.has_desktop() else "notify-send is not installed (apt-get install libnotify-bin)")
                log.warning("notifications go to this log, not the desktop: %s", reason)
            log.info("notification: %s | %s | %s", clean(note.title, MAX_TITLE_CHARS),
                     clean(note.subtitle, MAX_TITLE_CHARS), clean(note.body, MAX_BODY_CHARS).replace("\n", " | "))
            return "logged"
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  timeout=COMMAND_TIMEOUT_SECONDS, env=self.env)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("notification failed: %s: %s", Path(argv[0]).name, exc)
            return "error"
        if done.returncode != 0:
            log.warning("notification failed: %s exited %d: %s", Path(argv[0]).name, done.returncode,
                        done.stderr.decode(errors="replace").strip()[:200])
            return "error"
        return "ok"
