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


LAUNCHCTL_SCRIPT = """#!{python}
# A stand-in launchctl that keeps launchd's state of the gui domain in a file and answers
# as the real one does (its messages and exit statuses as users report them):
# - bootstrap DOMAIN PLIST loads the plist's Label; a label still loaded, or booted out
#   less than GOING_AWAY bootstraps ago, fails "Bootstrap failed: 5: Input/output error",
#   exit 5 (tomcounsell/ai#2013, pirj/noclamshell#30, haimgel/display-switch#85);
# - bootout DOMAIN/LABEL unloads it, or fails "Boot-out failed: 3: No such process", exit 3;
# - print DOMAIN/LABEL prints the job (state = running) or fails
#   'Could not find service "LABEL" in domain for port', exit 113.
import json, os, plistlib, sys
folder = {folder!r}
with open(os.path.join(folder, "launchctl.calls"), "a") as calls:
    calls.write(json.dumps(sys.argv[1:]) + "\\n")
state_path = os.path.join(folder, "launchd.json")
state = json.load(open(state_path)) if os.path.exists(state_path) else {{"loaded": [], "going_away": {{}}}}
going_away_path = os.path.join(folder, "launchctl.going_away")
going_away = int(open(going_away_path).read()) if os.path.exists(going_away_path) else 0
command, args = sys.argv[1], sys.argv[2:]
status = 0
if command == "bootstrap":
    label = plistlib.load(open(args[1], "rb"))["Label"]
    if label in state["loaded"] or state["going_away"].get(label, 0) > 0:
        if label in state["going_away"]:
            state["going_away"][label] -= 1
        sys.stderr.write("Bootstrap failed: 5: Input/output error\\nTry re-running the command as root for richer errors.\\n")
        status = 5
    else:
        state["loaded"].append(label)
elif command == "bootout":
    label = args[0].split("/", 2)[2]
    if label in state["loaded"]:
        state["loaded"].remove(label)
        state["going_away"][label] = going_away
    else:
        sys.stderr.write("Boot-out failed: 3: No such process\\n")
        status = 3
elif command == "print":
    label = args[0].split("/", 2)[2]
    if label in state["loaded"]:
        exit_code = state.get("last_exit", {{}}).get(label, "(never exited)")
        sys.stdout.write(args[0] + " = {{\\n\\tactive count = 1\\n\\tpath = x\\n\\tstate = running\\n\\n"
                         "\\tprogram = x\\n\\tlast exit code = " + str(exit_code) + "\\n}}\\n")
    else:
        sys.stderr.write('Could not find service "' + label + '" in domain for port\\n')
        status = 113
json.dump(state, open(state_path, "w"))
sys.exit(status)
"""


def stand_in_launchctl(recorders: Recorders, going_away: int = 0) -> None:
    """Replace the recorder's launchctl with one that behaves as launchd's (LAUNCHCTL_SCRIPT):
    after a bootout, the next `going_away` bootstraps of that label fail with error 5."""
    path = recorders.folder / "launchctl"
    path.write_text(LAUNCHCTL_SCRIPT.format(python=sys.executable, folder=str(recorders.folder)))
    path.chmod(0o755)
    (recorders.folder / "launchctl.going_away").write_text(str(going_away))
