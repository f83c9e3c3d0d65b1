"""Stand-in executables on PATH that record their arguments (as vm_stat is stood in).

`make_recorders(folder, names)` writes, for each name, an executable that appends its argv
(without argv[0]) as one JSON line to folder/<name>.calls and exits with the status in
folder/<name>.status (0 when absent), printing folder/<name>.stdout when present.
No desktop and no launchd/systemd run here (TESTING.md): these stand in for osascript,
terminal-notifier, notify-send, launchctl and systemctl.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SCRIPT = """#!{python}
import json, os, sys
folder = {folder!r}
name = {name!r}
with open(os.path.join(folder, name + ".calls"), "a") as calls:
    calls.write(json.dumps(sys.argv[1:]) + "\\n")
out = os.path.join(folder, name + ".stdout")
if os.path.exists(out):
    sys.stdout.write(open(out).read())
status = os.path.join(folder, name + ".status")
sys.exit(int(open(status).read()) if os.path.exists(status) else 0)
"""


class Recorders:
    def __init__(self, folder: Path, names: tuple[str, ...]):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            path = folder / name
            path.write_text(SCRIPT.format(python=sys.executable, folder=str(folder), name=name))
            path.chmod(0o755)

    def calls(self, name: str) -> list[list[str]]:
        path = self.folder / f"{name}.calls"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def fail(self, name: str, status: int) -> None:
        (self.folder / f"{name}.status").write_text(str(status))

    def answer(self, name: str, stdout: str) -> None:
        (self.folder / f"{name}.stdout").write_text(stdout)
