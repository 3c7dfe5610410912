"""The fault suite's shared parts: the table printed at the end of the run, and each test's own index.

Every fault test adds one row to the table (fault, what happened, images lost) before it asserts, so a fault
that is not survived still shows what it did.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from index_setup.indices import delete_indices


@dataclass
class Row:
    fault: str
    happened: str
    lost: str
    nodeid: str
    outcome: str = "?"


_rows: list[Row] = []


class FaultTable:
    """What a test adds its row with: `fault_table.row("ES down 6 s", "retried 40, ...", 0)`."""

    def __init__(self, nodeid: str) -> None:
        self.nodeid = nodeid

    def row(self, fault: str, happened: str, lost: int | str) -> None:
        _rows.append(Row(fault, happened, str(lost), self.nodeid))


@pytest.fixture
def fault_table(request) -> FaultTable:
    return FaultTable(request.node.nodeid)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        outcome = "xfail" if hasattr(report, "wasxfail") else report.outcome
        for row in _rows:
            if row.nodeid == item.nodeid:
                row.outcome = outcome
    return report


def _wrap(text: str, width: int) -> list[str]:
    words, lines, line = text.split(" "), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return [*lines, line]


def pytest_terminal_summary(terminalreporter):
    if not _rows:
        return
    widths = (34, 66, 6, 7)
    terminalreporter.section("fault suite: what was tried, what happened, what was lost")
    head = ("fault", "what happened", "lost", "test")
    terminalreporter.write_line(" | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    terminalreporter.write_line("-+-".join("-" * w for w in widths))
    for row in _rows:
        cells = [_wrap(row.fault, widths[0]), _wrap(row.happened, widths[1]), [row.lost], [row.outcome]]
        for n in range(max(len(c) for c in cells)):
            terminalreporter.write_line(" | ".join((c[n] if n < len(c) else "").ljust(w)
                                                   for c, w in zip(cells, widths, strict=True)).rstrip())


@pytest.fixture
def alias(index_alias, request, es):
    """An index alias of this test's own (image, sources and urls indices), deleted afterwards."""
    name = f"{index_alias}-{request.node.name[5:30].replace('_', '-').strip('-')}".lower()
    yield name
    delete_indices(es, name)


@pytest.fixture
def fault_env(crawl_settings_env, alias, tmp_path) -> dict[str, str]:
    """The crawl environment of the other end-to-end tests, with this test's index and dead-letter folder."""
    return {**crawl_settings_env, "IMGSEARCH_INDEX": alias,
            "IMGSEARCH_INDEX_DEAD_LETTER_DIR": str(tmp_path / "dead-letter")}


