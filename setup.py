"""The compiled part (Linux only, optional): exporter/_procfs.c reads the process walk's
/proc files. Where it cannot be built (no C compiler or Python headers) the install goes
on without it and the walk reads the same files from Python (exporter/collectors/apps.py).
Everything else about the package is in pyproject.toml."""

import sys

# pip reads requires-python (>=3.11) only after this file has run, and then says only "requires a
# different Python". Apple's /usr/bin/python3 (Command Line Tools) is 3.9: say what to install.
if sys.version_info < (3, 11):
    sys.exit(f"aitools-exporter needs Python 3.11 or later; this is Python {sys.version.split()[0]} ({sys.executable}). "
             "On macOS: brew install pipx && pipx install . (pipx brings its own Python); on Debian/Ubuntu: "
             "sudo apt-get install -y pipx && pipx install . (README, Quick start).")

from setuptools import Extension, setup  # noqa: E402

extensions = []
if sys.platform.startswith("linux"):
    extensions.append(Extension("exporter._procfs", ["exporter/_procfs.c"], optional=True,
                                extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"]))

setup(ext_modules=extensions)
