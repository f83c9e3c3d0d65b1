"""`aitools-exporter service install | uninstall | status`: `serve` and `receive` as the user's services.

macOS: two LaunchAgents in ~/Library/LaunchAgents (RunAtLoad, KeepAlive, logs in
~/Library/Logs/aitools/), loaded with `launchctl bootstrap gui/<uid> <plist>`.
Linux: two systemd user units in ~/.config/systemd/user, enabled with
`systemctl --user enable --now`, logging to ~/.local/state/aitools/.
Installing again is safe: the old job is unloaded and waited for, launchd's transient
refusal retried (BOOTSTRAP_ATTEMPTS); `status` shows each service's state, log and last error.

Both read the default configuration file, ~/.config/aitools/exporter.yml, which install
creates with the defaults (and a receiver token beside it) when it is absent and never
overwrites. The CLI reads that file too when no --config.file is given.
The platform comes from sys.platform; AITOOLS_PLATFORM (darwin | linux) forces it.
"""

from __future__ import annotations

import os
import plistlib
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from exporter.notify import current_platform

LABEL_PREFIX = "dev.aitools"
UNIT_PREFIX = "aitools"
COMMAND_TIMEOUT_SECONDS = 30.0
# launchd answers `Bootstrap failed: 5: Input/output error` while a booted-out job of the same
# label is still going away (or still loaded): tomcounsell/ai#2013, pirj/noclamshell#30,
# haimgel/display-switch#85. install waits for the old job to be gone, then retries the
# bootstrap with a doubling pause: at most BOOTSTRAP_ATTEMPTS tries, about 15 s in all.
BOOTSTRAP_ATTEMPTS = 5
FIRST_PAUSE_SECONDS = 1.0
RELEASE_WAIT_SECONDS = 10.0
TRANSIENT_LAUNCHD_ERRORS = ("5: Input/output error", "37: Operation already in progress")
LAST_ERROR_READ_BYTES = 64 * 1024  # the tail of a log file read for `service status`
HEALTH_SECONDS = 2.0          # `service status` waits this long for each /healthz
HEALTH_ANSWER_BYTES = 4096
# launchd starts agents with a bare PATH; Homebrew's folders let the receiver find terminal-notifier.
LAUNCHD_PATH = "/opt/homebrew/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"

DEFAULT_CONFIG_TEXT = """\
# aitools-exporter configuration, created by `aitools-exporter service install`.
# Every key is optional (README, "Configuration"); the services and the CLI read this file.
profile: development            # development | production
budgets: {{}}                     # e.g. {{ollama: 8GB, docker: 5GB}}
node:
  targets: []                   # e.g. [{{name: api, url: "http://127.0.0.1:3000/memory"}}]
receiver:
  token_file: {token_file}   # Alertmanager sends it (http_config.authorization.credentials_file)
actions:
  dry_run: true                 # log what a fix would do, do nothing; false: do it
  enabled: []                   # unload_idle_model, stop_duplicate_container, node_heap_snapshot
  keep_projects: []             # compose projects whose services are kept when one runs twice
"""


class ServiceError(Exception):
    pass


@dataclass(frozen=True)
class Service:
    command: str        # serve | receive
    label: str          # launchd label
    unit: str           # systemd unit
    description: str
    health_url: str


def services(receive_address: str | None = None) -> list[Service]:
    receive_host_port = receive_address or "127.0.0.1:8731"
    return [
        Service("serve", f"{LABEL_PREFIX}.exporter", f"{UNIT_PREFIX}-exporter.service",
                "aitools memory exporter (Prometheus metrics)", "http://127.0.0.1:8730/healthz"),
        Service("receive", f"{LABEL_PREFIX}.receiver", f"{UNIT_PREFIX}-receiver.service",
                "aitools Alertmanager receiver (notifications and fixes)", f"http://{receive_host_port}/healthz"),
    ]


def home() -> Path:
    return Path(os.environ.get("HOME") or Path.home())


def default_config_path() -> Path:
    return home() / ".config" / "aitools" / "exporter.yml"


def default_token_path() -> Path:
    return home() / ".config" / "aitools" / "receiver.token"


def default_audit_path() -> Path:
    if current_platform() == "darwin":
        return home() / "Library" / "Logs" / "aitools" / "receiver-audit.jsonl"
    state = os.environ.get("XDG_STATE_HOME") or str(home() / ".local" / "state")
    return Path(state) / "aitools" / "receiver-audit.jsonl"


def executable() -> list[str]:
    """How a service starts this program: the console script, or this Python with -m exporter."""
    script = Path(sys.argv[0])
    if script.name == "aitools-exporter" and script.exists():
        return [str(script.resolve())]
    found = shutil.which("aitools-exporter")
    if found:
        return [str(Path(found).resolve())]
    return [sys.executable, "-m", "exporter"]


def program_arguments(service: Service, config: Path, receive_address: str | None) -> list[str]:
    argv = [*executable(), service.command, "--config.file", str(config)]
    if service.command == "receive" and receive_address:
        argv += ["--web.listen-address", receive_address]
    return argv


def ensure_config() -> list[str]:
    """Create the default configuration and token when absent; never overwrite either."""
    said = []
    config, token = default_config_path(), default_token_path()
    config.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(config.parent, 0o700)
    if not token.exists():
        # Readable by others only through this 0700 folder: Alertmanager's container user
        # (nobody) reads it through the bind mount of compose.monitoring.yml.
        descriptor = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(descriptor, "w") as token_file:
            token_file.write(secrets.token_urlsafe(32))
        said.append(f"created the receiver token {token}")
    if config.exists():
        said.append(f"kept the existing configuration {config}")
    else:
        descriptor = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as config_file:
            config_file.write(DEFAULT_CONFIG_TEXT.format(token_file=_yaml_string(str(token))))
        said.append(f"created the configuration {config} (the defaults)")
    return said


def _yaml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT_SECONDS)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServiceError(f"{' '.join(argv)}: {exc}") from None
    if check and done.returncode != 0:
        raise ServiceError(f"{' '.join(argv)} exited {done.returncode}: {(done.stderr or done.stdout).strip()[:300]}")
    return done


# --------------------------------------------------------------------------- macOS

def launch_agents_dir() -> Path:
    return home() / "Library" / "LaunchAgents"


def logs_dir() -> Path:
    """Where both services write their log: ~/Library/Logs/aitools on macOS,
    $XDG_STATE_HOME/aitools (~/.local/state/aitools) on Linux."""
    if current_platform() == "darwin":
        return home() / "Library" / "Logs" / "aitools"
    return Path(os.environ.get("XDG_STATE_HOME") or str(home() / ".local" / "state")) / "aitools"


def last_error(log_file: Path) -> str | None:
    """The last error the service wrote to its log (a level=ERROR line, or the one-line
    `aitools-exporter: ...` a command exits with), read from the log's last 64 KiB."""
    try:
        with open(log_file, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - LAST_ERROR_READ_BYTES))
            lines = log.read(LAST_ERROR_READ_BYTES).decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if "level=ERROR" in line or line.startswith(("aitools-exporter: ", "Traceback")):
            return line.strip()[:300]
    return None


def plist_for(service: Service, config: Path, receive_address: str | None) -> dict:
    log_file = str(logs_dir() / _log_name(service))
    return {
        "Label": service.label,
        "ProgramArguments": program_arguments(service, config, receive_address),
        "RunAtLoad": True,
        "KeepAlive": True,
        "ThrottleInterval": 10,
        "EnvironmentVariables": {"PATH": LAUNCHD_PATH},
        "WorkingDirectory": str(home()),
        "StandardOutPath": log_file,
        "StandardErrorPath": log_file,
    }


def _gui_domain() -> str:
    return f"gui/{os.getuid()}"


def _loaded(service: Service) -> bool:
    return _run(["launchctl", "print", f"{_gui_domain()}/{service.label}"], check=False).returncode == 0


def _bootout_and_wait(service: Service) -> None:
    """Unload the job of an earlier install and wait (at most RELEASE_WAIT_SECONDS) until
    launchd no longer knows it: bootstrap refuses a label that is loaded or going away."""
    _run(["launchctl", "bootout", f"{_gui_domain()}/{service.label}"], check=False)
    deadline = time.monotonic() + RELEASE_WAIT_SECONDS
    while _loaded(service) and time.monotonic() < deadline:
        time.sleep(0.2)


def _bootstrap(service: Service, path: Path) -> int:
    """`launchctl bootstrap`, retried on launchd's transient errors with a doubling pause;
    the number of tries it took, or ServiceError saying what failed and what to do."""
    argv = ["launchctl", "bootstrap", _gui_domain(), str(path)]
    pause = FIRST_PAUSE_SECONDS
    for attempt in range(1, BOOTSTRAP_ATTEMPTS + 1):
        done = _run(argv, check=False)
        if done.returncode == 0:
            return attempt
        answer = (done.stderr or done.stdout).strip()
        if not any(error in answer for error in TRANSIENT_LAUNCHD_ERRORS) or attempt == BOOTSTRAP_ATTEMPTS:
            break
        time.sleep(pause)
        pause *= 2
    raise ServiceError(
        f"{' '.join(argv)} exited {done.returncode} (try {attempt} of {BOOTSTRAP_ATTEMPTS}): {answer[:300]}\n"
        f"launchd did not take {service.label}; the plist is written. Run `aitools-exporter service install` "
        f"again in a minute, and if it fails again see `launchctl print {_gui_domain()}/{service.label}` "
        f"and the log {logs_dir() / _log_name(service)}")


def _log_name(service: Service) -> str:
    return ("exporter" if service.command == "serve" else "receiver") + ".log"


def _install_launchd(receive_address: str | None) -> list[str]:
    said = []
    launch_agents_dir().mkdir(parents=True, exist_ok=True)
    logs_dir().mkdir(parents=True, exist_ok=True)
    for service in services(receive_address):
        path = launch_agents_dir() / f"{service.label}.plist"
        with open(path, "wb") as plist:
            plistlib.dump(plist_for(service, default_config_path(), receive_address), plist)
        _bootout_and_wait(service)
        tries = _bootstrap(service, path)
        again = f" after {tries} tries (launchd was still releasing the old job)" if tries > 1 else ""
        said.append(f"installed and started {service.label}{again} ({path}; log {logs_dir() / _log_name(service)})")
    return said


def _uninstall_launchd() -> list[str]:
    said = []
    for service in services():
        path = launch_agents_dir() / f"{service.label}.plist"
        _run(["launchctl", "bootout", f"{_gui_domain()}/{service.label}"], check=False)
        if path.exists():
            path.unlink()
            said.append(f"stopped and removed {service.label} ({path})")
        else:
            said.append(f"{service.label} was not installed")
    return said


def _status_launchd(service: Service) -> str:
    path = launch_agents_dir() / f"{service.label}.plist"
    if not path.exists():
        return "not installed"
    done = _run(["launchctl", "print", f"{_gui_domain()}/{service.label}"], check=False)
    if done.returncode != 0:
        return f"installed ({path}), not loaded"
    fields = {key.strip(): value.strip() for key, _, value in
              (line.partition("=") for line in done.stdout.splitlines()) if _}
    state = fields.get("state", "loaded")
    exit_code = fields.get("last exit code", "0")
    return f"installed ({path}), {state}" + (f" (last exit code {exit_code})" if exit_code not in ("0", "(never exited)") else "")


# --------------------------------------------------------------------------- Linux

def units_dir() -> Path:
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(home() / ".config")
    return Path(config_home) / "systemd" / "user"


def systemd_quote(word: str) -> str:
    """One ExecStart word: double-quoted, with systemd's specifiers (%) and variables ($) escaped."""
    escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


# glibc's allocator for a process that runs for months: two arenas instead of up to eight
# per core, and no per-thread caches of freed blocks. glibc reads GLIBC_TUNABLES only when a
# program starts, so it is set where the process is started: here and in the Dockerfile.
# Measured on a served exporter (1,000 scrapes, README Performance): resident memory 33.5
# instead of 34.9 MiB, growing 0.1 instead of 0.2-0.4 MiB between the 200th and 1,000th.
MALLOC_TUNABLES = "glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0"


def unit_for(service: Service, config: Path, receive_address: str | None) -> str:
    exec_start = " ".join(systemd_quote(word) for word in program_arguments(service, config, receive_address))
    return (
        "[Unit]\n"
        f"Description={service.description}\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        f"Environment=GLIBC_TUNABLES={MALLOC_TUNABLES}\n"
        f"ExecStart={exec_start}\n"
        # The same log file as on macOS, so that `service status` reads its last error on both.
        f"StandardOutput=append:{str(logs_dir() / _log_name(service)).replace('%', '%%')}\n"
        "StandardError=inherit\n"
        "Restart=always\n"
        "RestartSec=10\n"
        "\n"
        "[Install]\n"
        "WantedBy=default.target\n"
    )


def _install_systemd(receive_address: str | None) -> list[str]:
    said = []
    units_dir().mkdir(parents=True, exist_ok=True)
    logs_dir().mkdir(parents=True, exist_ok=True)
    for service in services(receive_address):
        path = units_dir() / service.unit
        path.write_text(unit_for(service, default_config_path(), receive_address))
        said.append(f"wrote {path}")
    _run(["systemctl", "--user", "daemon-reload"])
    names = [service.unit for service in services()]
    _run(["systemctl", "--user", "enable", "--now", *names])
    # A reinstall changes the units of running services: restart them on the new ones. systemctl
    # waits for the restart job to finish (stop of the old process included) before it returns.
    _run(["systemctl", "--user", "restart", *names])
    said.append(f"enabled and started {', '.join(names)} (logs: {logs_dir()})")
    return said


def _uninstall_systemd() -> list[str]:
    said = []
    names = [service.unit for service in services()]
    _run(["systemctl", "--user", "disable", "--now", *names], check=False)
    for name in names:
        path = units_dir() / name
        if path.exists():
            path.unlink()
            said.append(f"stopped and removed {name} ({path})")
        else:
            said.append(f"{name} was not installed")
    _run(["systemctl", "--user", "daemon-reload"], check=False)
    return said


def _status_systemd(service: Service) -> str:
    path = units_dir() / service.unit
    if not path.exists():
        return "not installed"
    done = _run(["systemctl", "--user", "is-active", service.unit], check=False)
    return f"installed ({path}), {done.stdout.strip() or 'unknown'}"


# --------------------------------------------------------------------------- the commands

def _platform() -> str:
    platform = current_platform()
    if platform == "darwin":
        return "darwin"
    if platform.startswith("linux"):
        return "linux"
    raise ServiceError(f"services are for macOS (launchd) and Linux (systemd), not {platform}")


def install(receive_address: str | None = None) -> list[str]:
    platform = _platform()
    said = ensure_config()
    said += _install_launchd(receive_address) if platform == "darwin" else _install_systemd(receive_address)
    said.append("check them with: aitools-exporter service status")
    return said


def uninstall() -> list[str]:
    platform = _platform()
    said = _uninstall_launchd() if platform == "darwin" else _uninstall_systemd()
    said.append(f"kept {default_config_path()} and {default_token_path()}")
    return said


def status() -> tuple[list[str], bool]:
    from exporter.collectors.base import CollectorError, Deadline
    from exporter.collectors.httpclient import Client

    platform = _platform()
    lines, healthy = [], True
    for service in services(_installed_receive_address(platform)):
        state = _status_launchd(service) if platform == "darwin" else _status_systemd(service)
        client = Client()
        try:
            answering = client.get(service.health_url, Deadline(HEALTH_SECONDS), HEALTH_ANSWER_BYTES).status == 200
        except CollectorError:
            answering = False
        finally:
            client.close()
        healthy = healthy and answering
        lines.append(f"{service.command:8} {service.label if platform == 'darwin' else service.unit}: {state}; "
                     f"{service.health_url} {'answers' if answering else 'does not answer'}")
        log_file = logs_dir() / _log_name(service)
        error = last_error(log_file)
        lines.append(f"{'':8} log {log_file}" + ("" if log_file.exists() else " (not written yet)")
                     + f"; last error: {error or 'none'}")
    return lines, healthy


def service_states() -> list[tuple[str, bool, str]]:
    """(service, running, what launchd or systemd says) for `serve` and `receive` (doctor)."""
    platform = _platform()
    states = []
    for service in services():
        state = _status_launchd(service) if platform == "darwin" else _status_systemd(service)
        running = state.endswith((", running", ", active")) or ", running (" in state
        states.append((service.command, running, state))
    return states


def installed_receive_address() -> str | None:
    """The address the installed receiver service listens on, if it was given one."""
    try:
        return _installed_receive_address(_platform())
    except ServiceError:
        return None


def _installed_receive_address(platform: str) -> str | None:
    """The --web.listen-address the installed receiver service was given, if any."""
    receiver = services()[1]
    try:
        if platform == "darwin":
            with open(launch_agents_dir() / f"{receiver.label}.plist", "rb") as plist:
                argv = plistlib.load(plist)["ProgramArguments"]
        else:
            text = (units_dir() / receiver.unit).read_text()
            line = next(line for line in text.splitlines() if line.startswith("ExecStart="))
            argv = [word.strip('"') for word in line.split(" ")]
    except (OSError, ValueError, KeyError, StopIteration, plistlib.InvalidFileException):
        return None
    if "--web.listen-address" in argv:
        index = argv.index("--web.listen-address")
        return argv[index + 1] if index + 1 < len(argv) else None
    return None
