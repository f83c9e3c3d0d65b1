"""`aitools-exporter notify --test` and notifications the platform will not show (issue 22).

The notifiers are stand-ins on PATH that record their argv and exit 0, as the real
terminal-notifier and osascript do even when nothing is shown (julienXX/terminal-notifier
#307, #312). What macOS and GNOME let us know is written into a HOME of the test's own:
- ~/Library/Preferences/com.apple.ncprefs.plist (binary plist, "apps": [{"bundle-id", "flags"}]);
  "Allow Notifications" is bit 25 of flags (NCprefs.py's ALLOW_NOTIFICATIONS = 1 << 25). The
  two flag values are ones users published for an app with everything off (1351102785) and
  with notifications allowed (1384657217), which differ in bit 25 only.
- ~/Library/DoNotDisturb/DB/Assertions.json and ModeConfigurations.json, in the shape
  drewkerr's focus-mode script (gist 0f2b61ce34e2b9e3ce0ec6a92ab05c18) reads:
  data[0].storeAssertionRecords[].assertionDetails.assertionDetailsModeIdentifier, and
  data[0].modeConfigurations[ID].mode.name.
- `gsettings get org.gnome.desktop.notifications show-banners` answering `false`.
"""

from __future__ import annotations

import json
import plistlib
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.config import parse_config
from exporter.notify import NCPREFS_ALLOW_NOTIFICATIONS, Notifier
from exporter.receiver import Receiver
from tests.parts.recorders import Recorders

FLAGS_OFF, FLAGS_ALLOWED = 1351102785, 1384657217


def test_the_published_flags_differ_in_the_allow_bit_only():
    assert FLAGS_OFF ^ FLAGS_ALLOWED == NCPREFS_ALLOW_NOTIFICATIONS


@pytest.fixture
def recorders(tmp_path) -> Recorders:
    return Recorders(tmp_path / "bin", ("osascript", "terminal-notifier", "notify-send", "gsettings"))


@pytest.fixture
def home(tmp_path) -> Path:
    folder = tmp_path / "home"
    folder.mkdir()
    return folder


def only(tmp_path: Path, recorders: Recorders, *names: str) -> str:
    folder = tmp_path / ("only-" + "-".join(names))
    folder.mkdir()
    for name in names:
        (folder / name).symlink_to(recorders.folder / name)
    return str(folder)


def notify_test(home: Path, path: str, platform: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exporter", "notify", "--test"], capture_output=True, text=True,
                          timeout=60, env={"HOME": str(home), "PATH": path, "AITOOLS_PLATFORM": platform, **env})


def write_ncprefs(home: Path, bundle: str, flags: int) -> None:
    path = home / "Library" / "Preferences" / "com.apple.ncprefs.plist"
    path.parent.mkdir(parents=True)
    document = {"apps": [{"bundle-id": "com.apple.Safari", "flags": FLAGS_OFF, "content_visibility": 0},
                         {"bundle-id": bundle, "flags": flags, "content_visibility": 0, "grouping": 0}],
                "dnd_prefs": b"", "ncprefs_version": 8}
    path.write_bytes(plistlib.dumps(document, fmt=plistlib.FMT_BINARY))


def write_focus(home: Path, mode_id: str | None, name: str) -> None:
    folder = home / "Library" / "DoNotDisturb" / "DB"
    folder.mkdir(parents=True)
    records = [] if mode_id is None else [{
        "assertionDetails": {"assertionDetailsModeIdentifier": mode_id, "assertionDetailsReason": "user-action",
                             "assertionDetailsIdentifier": "ControlCenter.Focus"},
        "assertionStartDateTimestamp": 786571842.0, "assertionSource": {"assertionClientIdentifier": "com.apple.controlcenter.focus"},
        "assertionUUID": "5F1E1D56-6C1B-4C5B-8F5C-2A9B8D5E7A11"}]
    (folder / "Assertions.json").write_text(json.dumps({"data": [{"storeAssertionRecords": records}], "header": {}}))
    (folder / "ModeConfigurations.json").write_text(json.dumps({"data": [{"modeConfigurations": {
        mode_id or "com.apple.donotdisturb.mode.default": {"mode": {"name": name, "modeIdentifier": mode_id}}}}]}))


def test_macos_shown_when_nothing_says_otherwise(tmp_path, home, recorders):
    write_ncprefs(home, "fr.julienxx.oss.terminal-notifier", FLAGS_ALLOWED)
    write_focus(home, None, "Do Not Disturb")  # no Focus on
    done = notify_test(home, only(tmp_path, recorders, "terminal-notifier", "osascript"), "darwin")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith('shown: "Firing: AitoolsNotificationTest" posted by ')
    (call,) = recorders.calls("terminal-notifier")
    assert call[:4] == ["-title", "Firing: AitoolsNotificationTest", "-subtitle", "aitools notifications reach this desktop"]
    assert call[5] == "Sent by `aitools-exporter notify --test`."


def test_macos_sender_not_allowed_is_an_error_naming_the_switch(tmp_path, home, recorders):
    write_ncprefs(home, "fr.julienxx.oss.terminal-notifier", FLAGS_OFF)
    done = notify_test(home, only(tmp_path, recorders, "terminal-notifier"), "darwin")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "not shown (error): notifications are off for terminal-notifier (fr.julienxx.oss.terminal-notifier), the "
        "program that posts them: System Settings > Notifications > terminal-notifier > Allow Notifications")
    assert len(recorders.calls("terminal-notifier")) == 1  # it was posted: it lands in Notification Center


def test_macos_osascript_posts_as_script_editor(tmp_path, home, recorders):
    write_ncprefs(home, "com.apple.ScriptEditor2", FLAGS_OFF)
    done = notify_test(home, only(tmp_path, recorders, "osascript"), "darwin")
    assert done.returncode == 1 and "notifications are off for Script Editor (com.apple.ScriptEditor2)" in done.stderr
    assert recorders.calls("osascript")[0][1].startswith('display notification "Sent by')


def test_macos_focus_on_is_an_error_naming_the_focus(tmp_path, home, recorders):
    write_ncprefs(home, "com.apple.ScriptEditor2", FLAGS_ALLOWED)
    write_focus(home, "com.apple.sleep.sleep-mode", "Sleep")
    done = notify_test(home, only(tmp_path, recorders, "osascript"), "darwin")
    assert done.returncode == 1
    assert done.stderr.startswith("not shown (error): a Focus is on (Sleep): macOS keeps notifications in "
                                  "Notification Center without showing them")


def test_gnome_do_not_disturb_is_an_error(tmp_path, home, recorders):
    recorders.answer("gsettings", "false\n")
    done = notify_test(home, only(tmp_path, recorders, "notify-send", "gsettings"), "linux", DISPLAY=":0",
                       DBUS_SESSION_BUS_ADDRESS="unix:path=/run/user/1000/bus")
    assert done.returncode == 1 and "GNOME's Do Not Disturb is on" in done.stderr
    assert recorders.calls("gsettings") == [["get", "org.gnome.desktop.notifications", "show-banners"]]
    assert recorders.calls("notify-send")[0][-2] == "Firing: AitoolsNotificationTest: aitools notifications reach this desktop"
    recorders.answer("gsettings", "true\n")
    assert notify_test(home, str(tmp_path / "only-notify-send-gsettings"), "linux", DISPLAY=":0",
                       DBUS_SESSION_BUS_ADDRESS="unix:path=/run/user/1000/bus").returncode == 0


def test_no_notification_server_on_the_bus_is_an_error(tmp_path, home, recorders):
    # notify-send fails this way when nothing owns org.freedesktop.Notifications on the session bus.
    recorders.fail("notify-send", 1)
    done = notify_test(home, only(tmp_path, recorders, "notify-send"), "linux", DISPLAY=":0",
                       DBUS_SESSION_BUS_ADDRESS="unix:path=/run/user/1000/bus")
    assert done.returncode == 1 and done.stderr.startswith("not shown (error): notify-send exited 1")


def test_no_desktop_is_not_shown(tmp_path, home, recorders):
    done = notify_test(home, only(tmp_path, recorders, "notify-send"), "linux")
    assert done.returncode == 1
    assert done.stderr.strip() == ("not shown (logged): no desktop session (no DISPLAY/WAYLAND_DISPLAY and D-Bus "
                                   "session bus)")


def test_the_receiver_counts_a_hidden_notification_as_error(tmp_path, home, recorders):
    write_ncprefs(home, "fr.julienxx.oss.terminal-notifier", FLAGS_OFF)
    notifier = Notifier("darwin", {"PATH": only(tmp_path, recorders, "terminal-notifier"), "HOME": str(home)})
    receiver = Receiver(parse_config("docker: {enabled: false}\n"), None, notifier=notifier)
    receiver.process({"status": "firing", "groupKey": "g", "groupLabels": {"alertname": "AitoolsX"},
                      "commonLabels": {}, "commonAnnotations": {"summary": "s"},
                      "alerts": [{"status": "firing", "labels": {"alertname": "AitoolsX"}, "annotations": {}}]})
    assert receiver.registry.get_sample_value("aitools_receiver_notifications_total", {"result": "error"}) == 1
    assert receiver.registry.get_sample_value("aitools_receiver_notifications_total", {"result": "ok"}) == 0


def test_every_notification_is_logged_also_when_shown(tmp_path, recorders, caplog):
    import logging

    from exporter.notify import Notification

    notifier = Notifier("linux", {"PATH": only(tmp_path, recorders, "notify-send"), "DISPLAY": ":0",
                                  "DBUS_SESSION_BUS_ADDRESS": "unix:path=/run/user/1000/bus"})
    with caplog.at_level(logging.INFO, logger="exporter.notify"):
        assert notifier.send(Notification("Firing: AitoolsX", "over budget", "uses 5.3GB\nFix: `ollama stop x`")) \
            == ("ok", "")
    assert [r.getMessage() for r in caplog.records] == [
        "notification: Firing: AitoolsX | over budget | uses 5.3GB | Fix: `ollama stop x`"]
    assert len(recorders.calls("notify-send")) == 1


def test_doctor_on_macos_reads_what_the_receiver_service_would_use(home, monkeypatch):
    """launchd gives the service LAUNCHD_PATH (no terminal-notifier on this machine's): osascript,
    that is Script Editor's switch, is the one doctor reads."""
    from exporter.doctor import Doctor

    write_ncprefs(home, "com.apple.ScriptEditor2", FLAGS_OFF)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("AITOOLS_PLATFORM", "darwin")
    (check,) = Doctor(None, "127.0.0.1:9", "http://127.0.0.1:9", "http://127.0.0.1:9", "127.0.0.1:9").notifications()
    assert check.passed is False
    assert check.detail.startswith("notifications are off for Script Editor (com.apple.ScriptEditor2)")
    assert check.fix == "open 'x-apple.systempreferences:com.apple.Notifications-Settings.extension'"
