"""Write grafana/dashboards/*.json, or with --check report the files that differ (exit 1)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import OUTPUT_DIR, build_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grafana.dashboards_src", description=__doc__)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a committed file differs")
    parser.add_argument("--output", type=Path, default=OUTPUT_DIR, help=f"directory (default {OUTPUT_DIR})")
    args = parser.parse_args(argv)

    built = build_all()
    stale = []
    for name, text in built.items():
        path = args.output / name
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(name)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    extra = sorted(p.name for p in args.output.glob("*.json") if p.name not in built) if args.output.exists() else []
    if args.check:
        for name in stale:
            print(f"{args.output / name}: differs from the code; run python -m grafana.dashboards_src", file=sys.stderr)
        for name in extra:
            print(f"{args.output / name}: no code builds it", file=sys.stderr)
        return 1 if stale or extra else 0
    for name in extra:
        print(f"note: {args.output / name} is not built by the code", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
