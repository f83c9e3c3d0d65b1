"""Desktop notifications for `aitools-exporter receive`.

macOS: terminal-notifier when it is installed, else `osascript -e 'display notification ...'`.
Linux: the freedesktop notification service through `notify-send`. A session without a
desktop (a server: no DISPLAY, WAYLAND_DISPLAY or D-Bus session bus) gets log lines instead,
and the log says so once.

Every notification is also logged (one INFO line). osascript and terminal-notifier exit 0
even when macOS does not show what they post (julienXX/terminal-notifier#307, #312): the
result is then "error" with the reason wherever the platform lets us know it
(`blocked_reason`): on macOS the sender's "Allow Notifications" switch in
~/Library/Preferences/com.apple.ncprefs.plist (bit 25 of the app's flags, as NCprefs.py reads
it) and a Focus on (~/Library/DoNotDisturb/DB/Assertions.json holds an assertion while one is,
as drewkerr's focus-mode script reads it; the file may need Full Disk Access, and what cannot
be read is not guessed); on GNOME the Do Not Disturb switch (gsettings
org.gnome.desktop.notifications show-banners false). notify-send itself fails when no
notification server answers on the session D-Bus.

The text comes from the alerts, that is from outside: it is only ever one element of a
fixed argument list (never a shell), and for osascript it is escaped into an AppleScript
string literal.
"""

from __future__ import annotations

import json
import logging
import os
import plistlib
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
# The programs that post, by their bundle identifier in System Settings > Notifications:
# terminal-notifier (Homebrew) and, for osascript's `display notification`, Script Editor.
MACOS_SENDERS = {"terminal-notifier": ("terminal-notifier", "fr.julienxx.oss.terminal-notifier"),
                 "osascript": ("Script Editor", "com.apple.ScriptEditor2")}
NCPREFS_ALLOW_NOTIFICATIONS = 1 << 25
MAX_STATE_FILE_BYTES = 4 * 2**20
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
        """Show it: 'ok', 'error' (the notifier failed, or the platform says it will not be
        shown) or 'logged' (no desktop here)."""
        return self.send(note)[0]

    def send(self, note: Notification) -> tuple[str, str]:
        """show(), with the reason of an 'error' or 'logged' ('' for 'ok')."""
        log.info("notification: %s | %s | %s", clean(note.title, MAX_TITLE_CHARS),
                 clean(note.subtitle, MAX_TITLE_CHARS), clean(note.body, MAX_BODY_CHARS).replace("\n", " | "))
        argv = self.command(note)
        if argv is None:
            reason = ("no desktop session (no DISPLAY/WAYLAND_DISPLAY and D-Bus session bus)"
                      if not self.has_desktop() else "notify-send is not installed (apt-get install libnotify-bin)")
            if not self._said_no_desktop:
                self._said_no_desktop = True
                log.warning("notifications go to this log, not the desktop: %s", reason)
            return "logged", reason
        program = Path(argv[0]).name
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  timeout=COMMAND_TIMEOUT_SECONDS, env=self.env)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("notification failed: %s: %s", program, exc)
            return "error", f"{program}: {exc}"
        if done.returncode != 0:
            said = done.stderr.decode(errors="replace").strip()[:200]
            log.warning("notification failed: %s exited %d: %s", program, done.returncode, said)
            return "error", f"{program} exited {done.returncode}: {said}"
        blocked = self.blocked_reason(program)
        if blocked:
            log.warning("notification not shown: %s", blocked)
            return "error", blocked
        return "ok", ""

    def blocked_reason(self, program: str | None = None) -> str | None:
        """Why the platform will not show what `program` posts (None: nothing says it will not)."""
        if self.platform == "darwin":
            program = program or ("terminal-notifier" if shutil.which("terminal-notifier", path=self.env.get("PATH"))
                                  else "osascript")
            return self._macos_sender_off(program) or self._macos_focus()
        if self.platform.startswith("linux") or self.platform.startswith("freebsd"):
            return self._gnome_do_not_disturb()
        return None

    def _home_file(self, *parts: str) -> Path | None:
        home = self.env.get("HOME")
        return Path(home, *parts) if home else None

    def _macos_sender_off(self, program: str) -> str | None:
        name, bundle = MACOS_SENDERS.get(program, (program, None))
        path = self._home_file("Library", "Preferences", "com.apple.ncprefs.plist")
        if bundle is None or path is None:
            return None
        try:
            with open(path, "rb") as file:
                apps = plistlib.loads(file.read(MAX_STATE_FILE_BYTES)).get("apps", [])
        except (OSError, ValueError, plistlib.InvalidFileException, AttributeError):
            return None
        for app in apps if isinstance(apps, list) else []:
            if isinstance(app, dict) and app.get("bundle-id") == bundle and isinstance(app.get("flags"), int):
                if not app["flags"] & NCPREFS_ALLOW_NOTIFICATIONS:
                    return (f"notifications are off for {name} ({bundle}), the program that posts them: System "
                            f"Settings > Notifications > {name} > Allow Notifications")
        return None

    def _macos_focus(self) -> str | None:
        folder = self._home_file("Library", "DoNotDisturb", "DB")
        if folder is None:
            return None
        try:
            with open(folder / "Assertions.json", "rb") as file:
                records = json.loads(file.read(MAX_STATE_FILE_BYTES))["data"][0].get("storeAssertionRecords") or []
        except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
            return None  # no Focus ever set, or not readable without Full Disk Access: not known
        if not records:
            return None
        mode = "Do Not Disturb"
        try:
            identifier = records[-1]["assertionDetails"]["assertionDetailsModeIdentifier"]
            with open(folder / "ModeConfigurations.json", "rb") as file:
                modes = json.loads(file.read(MAX_STATE_FILE_BYTES))["data"][0]["modeConfigurations"]
            mode = modes[identifier]["mode"]["name"]
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            pass
        return (f"a Focus is on ({mode}): macOS keeps notifications in Notification Center without showing them; "
                "turn it off in Control Center > Focus, or allow the program in System Settings > Focus > "
                f"{mode} > Allowed Apps")

    def _gnome_do_not_disturb(self) -> str | None:
        gsettings = shutil.which("gsettings", path=self.env.get("PATH"))
        if gsettings is None or not self.has_desktop():
            return None
        try:
            done = subprocess.run([gsettings, "get", "org.gnome.desktop.notifications", "show-banners"],
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=COMMAND_TIMEOUT_SECONDS, env=self.env)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if done.returncode == 0 and done.stdout.strip() == "false":
            return ("GNOME's Do Not Disturb is on (org.gnome.desktop.notifications show-banners is false): turn it "
                    "off in the notification list of the top bar, or run: gsettings set "
                    "org.gnome.desktop.notifications show-banners true")
        return None
