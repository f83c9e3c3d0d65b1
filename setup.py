"""Everything about the package is in pyproject.toml; this file only says what to install
where the Python is too old. pip reads requires-python (>=3.11) only after this file has
run, and then says only "requires a different Python": Apple's /usr/bin/python3 (Command
Line Tools) is 3.9."""

import sys

if sys.version_info < (3, 11):
    sys.exit(f"aitools-exporter needs Python 3.11 or later; this is Python {sys.version.split()[0]} ({sys.executable}). "
             "On macOS: brew install pipx && pipx install . (pipx brings its own Python); on Debian/Ubuntu: "
             "sudo apt-get install -y pipx && pipx install . (README, Quick start).")

from setuptools import setup  # noqa: E402

setup()
