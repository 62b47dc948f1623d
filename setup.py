"""Only what pyproject.toml cannot say: the optional C hot path of the namespace tracking.

If it cannot be built (no compiler or Python headers), cowfs installs without it and
tracks names in pure Python, correctly but slowing loops in notebook code several times."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("cowfs.cli.kernel._tracking", ["cli/kernel/_tracking.c"], optional=True)])
