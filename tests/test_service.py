"""`aitools-exporter service install | uninstall | status` and the default configuration file.

Each run has a HOME of its own. macOS: the plists are parsed with plistlib and the
`launchctl` calls recorded by a stand-in on PATH. Linux: the generated units are checked by
the real `systemd-analyze verify --user` and the `systemctl --user` calls recorded.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.config import load_config
from tests.conftest import missing_realpart
from tests.parts.recorders import Recorders


@pytest.fixture
def home(tmp_path) -> Path:
    # A space and a % in the path: quoting in plists and unit files is tested with it.
    folder = tmp_path / "home of 100% user"
    folder.mkdir()
    return folder


@pytest.fixture
def recorders(tmp_path) -> Recorders:
    return Recorders(tmp_path / "bin", ("launchctl", "systemctl"))


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
    assert recorders.calls("launchctl") == [
        ["bootout", f"gui/{uid}/dev.aitools.exporter"],
        ["bootstrap", f"gui/{uid}", str(agents / "dev.aitools.exporter.plist")],
        ["bootout", f"gui/{uid}/dev.aitools.receiver"],
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
    recorders.answer("launchctl", "gui/0/dev.aitools.exporter = {\n\tactive count = 1\n\tstate = running\n}\n")
    status = cli(home, recorders, "darwin", "service", "status")
    assert status.returncode in (0, 3), status.stderr
    lines = status.stdout.splitlines()
    agents = home / "Library" / "LaunchAgents"
    assert lines[0].startswith(f"serve    dev.aitools.exporter: installed ({agents / 'dev.aitools.exporter.plist'}), running; "
                               "http://127.0.0.1:8730/healthz ")
    assert lines[1].startswith(f"receive  dev.aitools.receiver: installed ({agents / 'dev.aitools.receiver.plist'}), "
                               "running; http://127.0.0.1:8731/healthz ")
    assert ["print", f"gui/{os.getuid()}/dev.aitools.receiver"] in recorders.calls("launchctl")

    done = cli(home, recorders, "darwin", "service", "uninstall")
    assert done.returncode == 0, done.stderr
    assert not list(agents.glob("*.plist"))
    assert recorders.calls("launchctl")[-2:] == [["bootout", f"gui/{os.getuid()}/dev.aitools.exporter"],
                                                 ["bootout", f"gui/{os.getuid()}/dev.aitools.receiver"]]
    assert (home / ".config" / "aitools" / "exporter.yml").is_file()  # kept
    status = cli(home, recorders, "darwin", "service", "status")
    assert "dev.aitools.exporter: not installed" in status.stdout and status.returncode in (0, 3)


def test_a_failing_launchctl_is_reported(home, recorders):
    recorders.fail("launchctl", 5)
    done = cli(home, recorders, "darwin", "service", "install")
    assert done.returncode == 1
    assert f"launchctl bootstrap gui/{os.getuid()}" in done.stderr and "exited 5" in done.stderr


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
