"""A line per test file as it finishes: its outcome counts and seconds.

The suite takes 6 minutes on a quiet machine and over half an hour on a busy
one, and under pytest-xdist the workers' output is not shown live; dots alone
do not say which part is running. This plugin runs where the terminal is (the
xdist controller, or the only process without xdist) and prints, for example::

    tests/test_cli.py: 11 passed in 94.2 s  [7/21 files, 5:48 elapsed]

It counts each file's tests from the collection (xdist: what a worker
collected; otherwise the session's items), follows the test reports, and
prints when the last test of a file has reported. Loaded from conftest.py
(``pytest_plugins``).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from typing import Any

import pytest

_ORDER = ("failed", "error", "passed", "skipped", "xfailed", "xpassed")


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def _outcome(report: pytest.TestReport) -> str | None:
    """The test's outcome this report decides, or None if this phase decides nothing."""
    if report.failed:
        return "failed" if report.when == "call" else "error"
    if report.skipped:
        return "xfailed" if hasattr(report, "wasxfail") else "skipped"
    if report.when == "call":
        return "xpassed" if hasattr(report, "wasxfail") else "passed"
    return None


class FileProgress:
    """Counts each file's finished tests and writes a line when a file is done."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.expected: dict[str, int] = {}
        self.outcomes: dict[str, str] = {}  # nodeid -> its outcome so far
        self.finished: dict[str, int] = defaultdict(int)
        self.seconds: dict[str, float] = defaultdict(float)
        self.files_done = 0
        self.start = time.monotonic()

    def expect(self, nodeids: list[str] | tuple[str, ...]) -> None:
        if self.expected or not nodeids:  # every xdist worker collects the same tests: count once
            return
        self.expected = dict(Counter(_file_of(n) for n in nodeids))

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        self.expect(ids)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.expect([item.nodeid for item in session.items])

    @pytest.hookimpl(trylast=True)  # after the terminal reporter has drawn this test's dot
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        path = _file_of(report.nodeid)
        self.seconds[path] += report.duration
        outcome = _outcome(report)
        if outcome is not None and self.outcomes.get(report.nodeid) not in ("failed", "error"):
            self.outcomes[report.nodeid] = outcome
        if report.when != "teardown":
            return
        self.finished[path] += 1
        if self.finished[path] == self.expected.get(path):
            self.files_done += 1
            self.write(path)

    def write(self, path: str) -> None:
        counts = Counter(o for n, o in self.outcomes.items() if _file_of(n) == path)
        said = ", ".join(f"{counts[o]} {o}" for o in _ORDER if counts[o])
        elapsed = int(time.monotonic() - self.start)
        line = (
            f"{path}: {said} in {self.seconds[path]:.1f} s  "
            f"[{self.files_done}/{len(self.expected)} files, {elapsed // 60}:{elapsed % 60:02d} elapsed]"
        )
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        if reporter._tw.width_of_current_line:  # after a row of dots
            reporter.write("\n")
        reporter.write_line(line, bold=True, red=bool(counts["failed"] or counts["error"]))


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):  # an xdist worker: its output is not shown; the controller reports
        return
    config.pluginmanager.register(FileProgress(config), "mlx_local_file_progress")
