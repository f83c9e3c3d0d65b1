"""Netdata's apps.plugin, the peer of the apps collector (../shared/TESTING.md).

Debian's netdata-core ships it; it runs alone while its stdin stays open and prints, every
`update_every` seconds, `BEGIN apps.mem` ... `SET <group> = <KiB>` ... `END`: per group
of its apps_groups.conf, "real memory without shared" (resident less shared pages). A
process no pattern matches takes its parent's group, as in the apps collector.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

BINARY = "/usr/lib/netdata/plugins.d/apps.plugin"
STOCK_CONFIG = "/usr/lib/netdata/conf.d"


class PluginUnavailable(RuntimeError):
    pass


class AppsPlugin:
    """apps.plugin with our own apps_groups.conf: {group: [patterns]} (netdata's syntax: a
    name, `prefix*`, `*suffix` or `*inside*` (the command line)); None: its stock groups."""

    def __init__(self, groups: dict[str, list[str]] | None, update_every: int = 1):
        if not os.access(BINARY, os.X_OK):
            raise PluginUnavailable(f"{BINARY} is not installed (apt-get install --no-install-recommends netdata-core)")
        self.folder = Path(tempfile.mkdtemp(prefix="aitools-appsplugin-"))
        if groups is not None:
            lines = [f"{name}: {' '.join(patterns)}" for name, patterns in groups.items()]
            (self.folder / "apps_groups.conf").write_text("\n".join(lines) + "\n")
        env = dict(os.environ, NETDATA_USER_CONFIG_DIR=str(self.folder), NETDATA_STOCK_CONFIG_DIR=STOCK_CONFIG)
        self.process = subprocess.Popen([BINARY, str(update_every)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, env=env)

    def passes(self, count: int, timeout: float = 120.0) -> list[dict[str, int]]:
        """The apps.mem figures of the next `count` passes, in bytes per group."""
        found: list[dict[str, int]] = []
        current: dict[str, int] | None = None
        deadline = time.monotonic() + timeout
        while len(found) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"apps.plugin gave {len(found)} of {count} passes in {timeout:g}s")
            line = self.process.stdout.readline()
            if not line:
                raise PluginUnavailable("apps.plugin exited")
            text = line.decode("utf-8", "replace").strip()
            if text.startswith("BEGIN apps.mem "):
                current = {}
            elif current is not None and text.startswith("SET "):
                name, _, value = text[4:].rpartition(" = ")
                current[name] = int(value) * 1024
            elif current is not None and text == "END":
                found.append(current)
                current = None
        return found

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        return int(Path(f"/proc/{self.process.pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> AppsPlugin:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
