"""The README's quick start, as a new user runs it (issue 22).

Debian's own /usr/bin/python3 (3.11, "externally managed", PEP 668) refuses `pip install .`,
as Homebrew's Python does on a Mac; the README's command (pipx, which gives the command an
environment of its own) works with /usr/bin first on PATH and a HOME of the test's own, and
`service install` then points the units at that environment's command. Apple's
/usr/bin/python3 (3.9) is refused by setup.py with a message naming what to install.

The install test takes about a minute (pipx builds the package and fetches its dependencies
from the package index): it is marked `slow` so that the fast tier leaves it out, and it is a
real part (pipx, Debian's Python) that skips locally when absent and fails under CI.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import missing_realpart
from tests.parts.monitoring import free_port, wait_until
from tests.parts.recorders import Recorders

ROOT = Path(__file__).resolve().parents[1]
DEBIAN_PYTHON = Path("/usr/bin/python3")
# What a new user's session passes on: the package index settings and proxies of this machine.
PASSED_ON = re.compile(r"^(PIP_|https?_proxy$|HTTPS?_PROXY$|NO_PROXY$|no_proxy$|SSL_CERT_FILE$)")


def readme_block(heading: str) -> list[str]:
    """The commands of the first ```sh block after `heading` in the README."""
    text = (ROOT / "README.md").read_text()
    after = text[text.index(heading):]
    block = after[after.index("```sh\n") + 6:]
    return [line.split("  #")[0].strip() for line in block[:block.index("```")].splitlines() if line.strip()]


def test_the_quick_start_is_the_same_command_in_the_service_section():
    debian, macos = readme_block("#### Debian and Ubuntu"), readme_block("#### macOS")
    assert debian == ["sudo apt-get install -y pipx && pipx ensurepath", "pipx install .",
                      "aitools-exporter service install"]
    assert macos == ["brew install pipx && pipx ensurepath", "pipx install .", "aitools-exporter service install"]
    services = (ROOT / "README.md").read_text().split("## Background services", 1)[1].split("\n## ", 1)[0]
    assert "`pipx install .`" in services


def test_apples_python_3_9_is_refused_naming_what_to_install():
    script = ("import runpy, sys; sys.version_info = (3, 9, 6, 'final', 0); sys.version = '3.9.6 (default)'; "
              "sys.executable = '/usr/bin/python3'; runpy.run_path('setup.py')")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "aitools-exporter needs Python 3.11 or later; this is Python 3.9.6 (/usr/bin/python3). On macOS: brew install "
        "pipx && pipx install . (pipx brings its own Python); on Debian/Ubuntu: sudo apt-get install -y pipx && pipx "
        "install . (README, Quick start).")


@pytest.mark.slow
@pytest.mark.realpart("pipx")
def test_a_new_debian_user_installs_with_the_readme_command(tmp_path):
    pipx = Path("/usr/bin/pipx")
    managed = list(Path("/usr/lib").glob("python3.*/EXTERNALLY-MANAGED"))
    if not DEBIAN_PYTHON.exists() or not managed or not pipx.exists():
        missing_realpart("Debian's externally managed /usr/bin/python3 and pipx (apt-get install -y pipx python3-venv)")
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
           **{key: value for key, value in os.environ.items() if PASSED_ON.match(key)}}
    source = tmp_path / "aitools-memory-exporter"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info", "build"))

    # What the user tries first: refused by PEP 668.
    refused = subprocess.run([str(DEBIAN_PYTHON), "-m", "pip", "install", "."], cwd=source, env=env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "externally-managed-environment" in refused.stdout + refused.stderr

    # The README's commands (the apt-get part is done by tests/install-deps.sh).
    ensure = subprocess.run(["pipx", "ensurepath"], cwd=source, env=env, capture_output=True, text=True, timeout=60)
    assert ensure.returncode == 0, ensure.stderr
    installed = subprocess.run(["pipx", "install", "."], cwd=source, env=env, capture_output=True, text=True,
                               timeout=900)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    command = home / ".local" / "bin" / "aitools-exporter"
    assert command.exists()
    assert str(home / ".local" / "bin") in (home / ".bashrc").read_text() + (home / ".profile").read_text()
    version = subprocess.run([str(command), "--version"], env=env, capture_output=True, text=True, timeout=60)
    assert version.stdout.strip() == "aitools-exporter, version 0.1.0"

    # The services point at that environment's command.
    recorders = Recorders(tmp_path / "bin", ("systemctl",))
    service_env = {**env, "PATH": f"{recorders.folder}:{home / '.local' / 'bin'}:/usr/bin:/bin",
                   "AITOOLS_PLATFORM": "linux"}
    service = subprocess.run(["aitools-exporter", "service", "install"], env=service_env, capture_output=True,
                             text=True, timeout=60)
    assert service.returncode == 0, service.stderr
    unit = (home / ".config" / "systemd" / "user" / "aitools-exporter.service").read_text()
    venv_command = home / ".local" / "pipx" / "venvs" / "aitools-memory-exporter" / "bin" / "aitools-exporter"
    assert f'ExecStart="{venv_command}" "serve" "--config.file" "{home}/.config/aitools/exporter.yml"' in unit

    # And the installed command serves.
    port = free_port()
    server = subprocess.Popen([str(venv_command), "--web.listen-address", f"127.0.0.1:{port}"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def scraped():
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
            except httpx.HTTPError:
                return None
            return answer.text if answer.status_code == 200 else None
        text = wait_until(scraped, 60, "the installed exporter", interval=0.5)
    finally:
        server.terminate()
        server.wait(15)
    assert 'aitools_collector_success{collector="system"} 1.0' in text
