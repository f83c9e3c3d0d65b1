"""Regenerate grafana/dashboards/*.json: `python grafana/build.py [--check]` (same as python -m grafana.dashboards_src)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grafana.dashboards_src.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
