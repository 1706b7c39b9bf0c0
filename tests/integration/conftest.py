"""Shared fixtures for the integration tests (no autouse fixtures here).

    ingest            a running postern-ingest with default test config
    make_ingest       factory: make_ingest(config={"ingest": {...}}, ...) -> Ingest
    need_spoolctl     skip marker-fixture for tests that read the spool

Every daemon logs to its own file in the test's tmp_path; the log is
printed in the teardown (pytest shows it only when the test failed), and a
sanitizer report in it, or a non-zero exit at SIGTERM, fails the test.
"""
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import postern  # noqa: E402


@pytest.fixture
def make_ingest(tmp_path):
    daemons = []

    def make(config=None, name=None, start=True, **kw):
        d = postern.Ingest(tmp_path, config=config, name=name or f"ingest{len(daemons)}", **kw)
        daemons.append(d)
        if start:
            d.start()
        return d

    yield make

    problems = postern.stop_and_check(daemons, tail=300)
    if problems:
        pytest.fail("daemon problems:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture
def ingest(make_ingest):
    return make_ingest()


@pytest.fixture
def need_spoolctl():
    if not postern.spoolctl_binary().exists():
        msg = f"{postern.spoolctl_binary()} not built"
        if os.environ.get("POSTERN_BUILD"):     # under meson test it must exist
            pytest.fail(msg)
        pytest.skip(msg)
