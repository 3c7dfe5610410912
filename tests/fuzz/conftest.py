"""Prints the fuzzing run counts at the end of the test run."""

from __future__ import annotations

from tests.fuzz import report


def pytest_terminal_summary(terminalreporter):
    if not report.runs:
        return
    terminalreporter.section("fuzzing")
    for target, engine, runs, seconds, crashes, corpus in report.runs:
        terminalreporter.write_line(f"{target}: {runs} runs in {seconds} s ({engine}), {crashes} crashes, "
                                    f"kept corpus {corpus} inputs")
