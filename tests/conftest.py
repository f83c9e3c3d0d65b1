"""Shared test setup.

Real parts (../shared/TESTING.md) live in tests/parts/: plain classes usable from
benchmarks too, with thin pytest fixtures. A real part that cannot start skips the
test on a developer's machine and fails it under CI (CI=true): a suite that skipped
its real parts has not passed.
"""

from __future__ import annotations

import os

import pytest

pytest_plugins = [
    "tests.parts.docker_engine",
    "tests.parts.node_processes",
    "tests.parts.llm_standins",
    "tests.parts.processes",
    "tests.parts.app_processes",
]

UNDER_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing_realpart(reason: str):
    """Skip (locally) or fail (under CI) a test whose real part is not there."""
    if UNDER_CI:
        pytest.fail(f"real part missing under CI: {reason}", pytrace=False)
    pytest.skip(reason)
