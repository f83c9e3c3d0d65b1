"""Regenerate the budget-usage block of prometheus/rules/aitools-recording.rules.yml from
exporter/budgets.py (USAGE): `python prometheus/build.py [--check]`.

Only the lines between `# BEGIN generated` and `# END generated` change; --check reports
whether the committed file equals the generated one (exit 1 when it does not).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exporter.budget_rules import generated_rules  # noqa: E402

RULES = ROOT / "prometheus" / "rules" / "aitools-recording.rules.yml"
BEGIN = "      # BEGIN generated from exporter/budgets.py by prometheus/build.py: do not edit\n"
END = "      # END generated\n"


def block() -> str:
    out = []
    for rule in generated_rules():
        out.append(f"      - record: {rule['record']}\n")
        out.append("        expr: |\n")
        out.extend(f"          {line}\n" for line in rule["expr"].rstrip("\n").split("\n"))
        out.append("        labels:\n")
        out.extend(f"          {key}: {value}\n" for key, value in rule["labels"].items())
    return "".join(out)


def render(text: str) -> str:
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + BEGIN + block() + END + tail


def main(argv: list[str]) -> int:
    text = RULES.read_text()
    wanted = render(text)
    if "--check" in argv:
        if wanted != text:
            print(f"{RULES}: differs from what exporter/budgets.py generates; run python prometheus/build.py",
                  file=sys.stderr)
            return 1
        return 0
    RULES.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
