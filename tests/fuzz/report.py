"""The fuzzing run counts, kept by tests/fuzz/test_fuzz.py and printed by tests/fuzz/conftest.py."""

from __future__ import annotations

runs: list[tuple[str, str, int, int, int, int]] = []


def record(target: str, engine: str, count: int, seconds: int, crashes: int, corpus: int) -> None:
    runs.append((target, engine, count, seconds, crashes, corpus))
