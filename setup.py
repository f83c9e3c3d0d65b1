"""The compiled part (Linux only, optional): exporter/_procfs.c reads the process walk's
/proc files. Where it cannot be built (no C compiler or Python headers) the install goes
on without it and the walk reads the same files from Python (exporter/collectors/apps.py).
Everything else about the package is in pyproject.toml."""

import sys

from setuptools import Extension, setup

extensions = []
if sys.platform.startswith("linux"):
    extensions.append(Extension("exporter._procfs", ["exporter/_procfs.c"], optional=True,
                                extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"]))

setup(ext_modules=extensions)
