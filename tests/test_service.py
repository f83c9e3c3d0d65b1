"""`aitools-exporter service install | uninstall | status` and the default configuration file.

Each run has a HOME of its own. macOS: the plists are parsed with plistlib and the
`launchctl` calls recorded by a stand-in on PATH. Linux: the generated units are checked by
the real `systemd-analyze verify --user` and the `systemctl --user` calls recorded.
"""

from __future__ import annotations

import json
import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.config import load_config
from tests.conftest import missing_realpart
import time

from tests.parts.recorders import Recorders, stand_in_launchctl


@pytest.fixture
def home(tmp_path) -> Path:
    # A space and a % in the path: quoting in plists and unit files is tested with it.
    folder = tmp_path / "home of 100% user"
    folder.mkdir()
    return folder


@pytest.fixture
def recorders(tmp_path) -> Recorders:
    made = Recorders(tmp_path / "bin", ("launchctl", "systemctl"))
    stand_in_launchctl(made)  # launchctl as launchd answers: state kept between calls
    return made


def cli(home: Path, recorders: Recorders, platform: str, *args: str) -> subprocess.CompletedProcess:
    env = {"HOME": str(home), "PATH": f"{recorders.folder}:{os.environ['PATH']}", "AITOOLS_PLATFORM": platform}
    return subprocess.run([sys.executable, "-m", "exporter", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_macos_install_writes_launch_agents_and_bootstraps_them(home, recorders):
    done = cli(home, recorders, "darwin", "service", "install")
    assert done.returncode == 0, done.stderr
    config = home / ".config" / "aitools" / "exporter.yml"
    token = home / ".config" / "aitools" / "receiver.token"
    uid = os.getuid()
    agents = home / "Library" / "LaunchAgents"
    plists = {}
    for label, command in (("dev.aitools.exporter", "serve"), ("dev.aitools.receiver", "receive")):
        with open(agents / f"{label}.plist", "rb") as file:
            plists[label] = plist = plistlib.load(file)
        assert plist["Label"] == label
        assert plist["ProgramArguments"][-3:] == [command, "--config.file", str(config)]
        assert plist["RunAtLoad"] is True and plist["KeepAlive"] is True
        name = "exporter" if command == "serve" else "receiver"
        assert plist["StandardOutPath"] == plist["StandardErrorPath"] == str(home / "Library/Logs/aitools" / f"{name}.log")
        program = plist["ProgramArguments"][0]
        assert Path(program).is_file() and os.access(program, os.X_OK)
    assert (home / "Library" / "Logs" / "aitools").is_dir()
    # Nothing was loaded: each bootout fails ("No such process"), launchd is asked once whether
    # the job is still there, then the bootstrap succeeds at once.
    assert recorders.calls("launchctl") == [
        ["bootout", f"gui/{uid}/dev.aitools.exporter"],
        ["print", f"gui/{uid}/dev.aitools.exporter"],
        ["bootstrap", f"gui/{uid}", str(agents / "dev.aitools.exporter.plist")],
        ["bootout", f"gui/{uid}/dev.aitools.receiver"],
        ["print", f"gui/{uid}/dev.aitools.receiver"],
        ["bootstrap", f"gui/{uid}", str(agents / "dev.aitools.receiver.plist")],
    ]
    # The default configuration: created with the defaults, valid, with the token beside it.
    loaded = load_config(config)
    assert loaded.receiver.token_file == str(token) and loaded.actions.dry_run is True and loaded.actions.enabled == ()
    assert len(token.read_text()) >= 40 and "\n" not in token.read_text()
    assert config.stat().st_mode & 0o777 == 0o600 and config.parent.stat().st_mode & 0o777 == 0o700
    assert f"created the configuration {config}" in done.stdout

    # Installing again never overwrites the user's configuration or token.
    config.write_text("profile: production\n")
    token_before = token.read_text()
    again = cli(home, recorders, "darwin", "service", "install")
    assert again.returncode == 0 and f"kept the existing configuration {config}" in again.stdout
    assert config.read_text() == "profile: production\n" and token.read_text() == token_before


def test_macos_status_and_uninstall(home, recorders):
    assert cli(home, recorders, "darwin", "service", "install").returncode == 0
    logs = home / "Library" / "Logs" / "aitools"
    # What launchd's job wrote: the receiver could not listen (another one holds the port).
    (logs / "receiver.log").write_text(
        "2026-12-04 18:00:00,000 level=INFO exporter: starting\n"
        "aitools-exporter: cannot listen on 127.0.0.1:8731: [Errno 48] Address already in use\n")
    status = cli(home, recorders, "darwin", "service", "status")
    assert status.returncode in (0, 3), status.stderr
    lines = status.stdout.splitlines()
    agents = home / "Library" / "LaunchAgents"
    assert lines[0].startswith(f"serve    dev.aitools.exporter: installed ({agents / 'dev.aitools.exporter.plist'}), running; "
                               "http://127.0.0.1:8730/healthz ")
    assert lines[1] == f"         log {logs / 'exporter.log'} (not written yet); last error: none"
    assert lines[2].startswith(f"receive  dev.aitools.receiver: installed ({agents / 'dev.aitools.receiver.plist'}), "
                               "running; http://127.0.0.1:8731/healthz ")
    assert lines[3] == (f"         log {logs / 'receiver.log'}; last error: aitools-exporter: cannot listen on "
                        "127.0.0.1:8731: [Errno 48] Address already in use")
    assert ["print", f"gui/{os.getuid()}/dev.aitools.receiver"] in recorders.calls("launchctl")

    done = cli(home, recorders, "darwin", "service", "uninstall")
    assert done.returncode == 0, done.stderr
    assert not list(agents.glob("*.plist"))
    assert recorders.calls("launchctl")[-2:] == [["bootout", f"gui/{os.getuid()}/dev.aitools.exporter"],
                                                 ["bootout", f"gui/{os.getuid()}/dev.aitools.receiver"]]
    assert (home / ".config" / "aitools" / "exporter.yml").is_file()  # kept
    status = cli(home, recorders, "darwin", "service", "status")
    assert "dev.aitools.exporter: not installed" in status.stdout and status.returncode in (0, 3)


def test_reinstalling_waits_for_launchd_and_retries_its_transient_error(home, recorders):
    """The README says to reinstall after a config change: launchd then answers error 5 for a
    while after the bootout (the stand-in: the next 2 bootstraps of each label)."""
    assert cli(home, recorders, "darwin", "service", "install").returncode == 0
    stand_in_launchctl(recorders, going_away=2)
    started = time.monotonic()
    again = cli(home, recorders, "darwin", "service", "install")
    took = time.monotonic() - started
    assert again.returncode == 0, again.stderr
    assert "installed and started dev.aitools.exporter after 3 tries (launchd was still releasing the old job)" \
        in again.stdout
    bootstraps = [call for call in recorders.calls("launchctl") if call[0] == "bootstrap"]
    assert len(bootstraps) == 2 + 3 + 3  # the first install's two, then three tries of each
    assert 2 * (1 + 2) <= took < 60  # the pauses: 1 s, then 2 s, per label
    state = json.loads((recorders.folder / "launchd.json").read_text())
    assert sorted(state["loaded"]) == ["dev.aitools.exporter", "dev.aitools.receiver"]  # both running


def test_launchd_still_refusing_after_the_last_try_is_reported(home, recorders):
    assert cli(home, recorders, "darwin", "service", "install").returncode == 0
    stand_in_launchctl(recorders, going_away=100)
    done = cli(home, recorders, "darwin", "service", "install")
    assert done.returncode == 1
    uid = os.getuid()
    assert (f"launchctl bootstrap gui/{uid} {home}/Library/LaunchAgents/dev.aitools.exporter.plist exited 5 "
            "(try 5 of 5): Bootstrap failed: 5: Input/output error") in done.stderr
    assert f"see `launchctl print gui/{uid}/dev.aitools.exporter`" in done.stderr


def test_a_failing_launchctl_is_reported_at_once(home, recorders):
    Recorders(recorders.folder, ("launchctl",))  # the plain recorder again: it answers what it is told
    recorders.fail("launchctl", 125)  # not launchd's transient error: no retry
    recorders.answer("launchctl", "Bootstrap failed: 125: Domain does not support specified action\n")
    started = time.monotonic()
    done = cli(home, recorders, "darwin", "service", "install")
    assert done.returncode == 1 and time.monotonic() - started < 30
    assert f"launchctl bootstrap gui/{os.getuid()}" in done.stderr and "exited 125 (try 1 of 5)" in done.stderr
    assert "Domain does not support specified action" in done.stderr


def test_linux_install_writes_user_units_that_systemd_verifies(home, recorders, tmp_path):
    done = cli(home, recorders, "linux", "service", "install", "--receive.listen-address", "172.17.0.1:8731")
    assert done.returncode == 0, done.stderr
    units = home / ".config" / "systemd" / "user"
    names = ["aitools-exporter.service", "aitools-receiver.service"]
    assert sorted(p.name for p in units.iterdir()) == names
    assert recorders.calls("systemctl") == [["--user", "daemon-reload"], ["--user", "enable", "--now", *names],
                                            ["--user", "restart", *names]]
    receiver_unit = (units / "aitools-receiver.service").read_text()
    config = home / ".config" / "aitools" / "exporter.yml"
    quoted_config = '"' + str(config).replace("%", "%%") + '"'
    assert f'"receive" "--config.file" {quoted_config} "--web.listen-address" "172.17.0.1:8731"' in receiver_unit
    assert "WantedBy=default.target" in receiver_unit and "Restart=always" in receiver_unit
    for name in names:  # glibc reads its tunables only at start: the unit sets them
        assert "Environment=GLIBC_TUNABLES=glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0\n" in (units / name).read_text()

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        missing_realpart("systemd-analyze is not installed (apt-get install systemd)")
    own_home = tmp_path / "analyze-home"
    own_home.mkdir()
    verified = subprocess.run([analyze, "verify", "--user", *(str(units / name) for name in names)],
                              env={"HOME": str(own_home), "PATH": os.environ["PATH"],
                                   "XDG_RUNTIME_DIR": str(own_home)},
                              capture_output=True, text=True, timeout=120)
    # (It fails, naming the unit, on a bad line or an ExecStart that is not executable.)
    problems = [line for line in (verified.stdout + verified.stderr).splitlines() if "aitools-" in line]
    assert verified.returncode == 0 and not problems, verified.stdout + verified.stderr

    status = cli(home, recorders, "linux", "service", "status")
    assert "http://172.17.0.1:8731/healthz" in status.stdout  # the address it was installed with
    assert ["--user", "is-active", "aitools-receiver.service"] in recorders.calls("systemctl")

    done = cli(home, recorders, "linux", "service", "uninstall")
    assert done.returncode == 0 and not list(units.iterdir())
    assert ["--user", "disable", "--now", *names] in recorders.calls("systemctl")


def test_the_cli_reads_the_default_config_file_only_when_it_exists(home, recorders):
    absent = cli(home, recorders, "linux", "check-config")
    assert absent.returncode == 0 and absent.stdout.startswith("built-in defaults: configuration is valid")
    config = home / ".config" / "aitools" / "exporter.yml"
    config.parent.mkdir(parents=True)
    config.write_text("profile: production\n")
    present = cli(home, recorders, "linux", "check-config")
    assert present.returncode == 0 and present.stdout.startswith(f"{config}: configuration is valid (profile production")
    given = home / "other.yml"
    given.write_text("profile: development\n")
    explicit = cli(home, recorders, "linux", "check-config", "--config.file", str(given))
    assert explicit.stdout.startswith(f"{given}: configuration is valid (profile development")
