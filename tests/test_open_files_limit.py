"""The open-files limit is raised only within what the platform allows (issue 22).

macOS refuses setrlimit above `kern.maxfilesperproc` whatever the hard limit says; a stand-in
`sysctl` on PATH answers that key as the real one does (`sysctl -n KEY` prints the value), or
fails as it does on a machine without the key ("unknown oid"), which is logged.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ("import logging, resource; logging.basicConfig(); from exporter.selfmetrics import raise_open_files_limit; "
          "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096)); raise_open_files_limit(); "
          "print(*resource.getrlimit(resource.RLIMIT_NOFILE))")


def run(tmp_path: Path, sysctl: str, platform: str) -> subprocess.CompletedProcess:
    stand_in = tmp_path / "sysctl"
    stand_in.write_text(f"#!/bin/sh\n{sysctl}\n")
    stand_in.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "AITOOLS_PLATFORM": platform}
    return subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, cwd=ROOT,
                          env=env, timeout=60)


def test_macos_raises_no_higher_than_kern_maxfilesperproc(tmp_path):
    done = run(tmp_path, '[ "$*" = "-n kern.maxfilesperproc" ] && echo 2048', "darwin")
    assert done.stdout.split() == ["2048", "4096"] and done.stderr == ""


def test_a_failing_sysctl_is_logged_and_the_limit_kept(tmp_path):
    done = run(tmp_path, 'echo "sysctl: unknown oid \'kern.maxfilesperproc\'" >&2; exit 1', "darwin")
    assert done.stdout.split() == ["256", "4096"]
    assert "could not raise the open-files limit (kept 256)" in done.stderr


def test_linux_raises_to_the_hard_limit(tmp_path):
    done = run(tmp_path, "exit 1", "linux")  # sysctl is not asked on Linux
    assert done.stdout.split() == ["4096", "4096"]
