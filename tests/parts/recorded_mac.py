"""A recorded Mac (tests/recordings/<name>/recording.json) on this machine: stand-in `vm_stat`,
`sysctl` and `ioreg` on PATH that answer as that Mac's tools did, and its process table.

Each stand-in looks its argv up in the recording's "commands" (the key is the argv joined by
spaces: "sysctl -n hw.memsize") and prints the recorded stdout and stderr with the recorded
exit status. A command the recording lacks fails as the real tool fails: `sysctl -n KEY`
prints "sysctl: unknown oid 'KEY'" and exits 1 (what macOS's sysctl does for a key the
machine does not have); the others exit 1 with a message.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from exporter.collectors.apps import Proc

RECORDINGS = Path(__file__).resolve().parent.parent / "recordings"
TOOLS = ("vm_stat", "sysctl", "ioreg")

STANDIN = """#!{python}
import json, sys
name = {name!r}
commands = json.load(open({recording!r}))["commands"]
answer = commands.get(" ".join([name] + sys.argv[1:]))
if answer is None:
    if name == "sysctl" and len(sys.argv) == 3 and sys.argv[1] == "-n":
        sys.stderr.write("sysctl: unknown oid '%s'\\n" % sys.argv[2])
    else:
        sys.stderr.write("%s: not in the recording: %s\\n" % (name, " ".join(sys.argv[1:])))
    sys.exit(1)
sys.stdout.write(answer.get("stdout", ""))
sys.stderr.write(answer.get("stderr", ""))
sys.exit(answer.get("returncode", 0))
"""


def names() -> list[str]:
    return sorted(path.name for path in RECORDINGS.iterdir() if (path / "recording.json").is_file())


def load(name: str) -> dict:
    return json.loads((RECORDINGS / name / "recording.json").read_text())


def install(recording: dict, folder: Path) -> Path:
    """Writes the stand-ins for `recording` into folder (put it first on PATH); returns folder."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "recording.json"
    data.write_text(json.dumps(recording))
    for tool in TOOLS:
        path = folder / tool
        path.write_text(STANDIN.format(python=sys.executable, name=tool, recording=str(data)))
        path.chmod(0o755)
    return folder


def processes(recording: dict) -> list[Proc]:
    """The recorded process table as the apps matcher reads it: each process's footprint where
    it was read, else its resident memory."""
    return [Proc(item["pid"], item["ppid"], item["name"],
                 item["footprint"] if item["footprint"] is not None else item["rss"],
                 " ".join(item["cmdline"]) if item["cmdline"] else None, item["rss"])
            for item in recording["processes"]]
