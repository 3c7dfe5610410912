"""Only for `scrapyd-deploy`, which builds its egg with `setup.py bdist_egg` (and writes a setup.py of its own,
with other metadata, where none exists): everything is declared in pyproject.toml."""

from setuptools import setup

setup()
