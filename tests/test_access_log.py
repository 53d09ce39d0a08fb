"""The access log writes what `logging` would write, with the standard setup and without it."""

from __future__ import annotations

import asyncio
import io
import logging
import re

import pytest

from gateway.logs import FLUSH_INTERVAL, AccessLog

STANDARD = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO test\.gw\.access(?P<tail>[^:]*): (?P<message>.*)")


@pytest.fixture
def loggers():
    parent = logging.getLogger("test.gw")
    child = logging.getLogger("test.gw.access")
    saved = (parent.handlers[:], parent.level, parent.propagate)
    yield parent, child
    parent.handlers[:], parent.level, parent.propagate = saved
    child.handlers.clear()
    child.filters.clear()


def standard_handler(parent: logging.Logger, fmt: str = STANDARD) -> io.StringIO:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(fmt))
    parent.handlers[:] = [handler]
    parent.setLevel(logging.INFO)
    parent.propagate = False
    return stream


def test_standard_setup_batched(loggers):
    parent, child = loggers
    stream = standard_handler(parent)
    access = AccessLog(child)

    async def three_lines() -> tuple[str, str, str]:
        access.write('127.0.0.1 "GET /v2/" 200 in=0 out=2 0.001s id=1')
        access.write('127.0.0.1 "HEAD /v2/x/manifests/v1" 200 in=0 out=0 0.002s id=2')
        before = stream.getvalue()
        await asyncio.sleep(0)
        first_batch = stream.getvalue()
        # Right after a write, the next line waits for the flush interval.
        access.write('127.0.0.1 "GET /v2/" 200 in=0 out=2 0.001s id=3')
        await asyncio.sleep(0)
        after_second_write = stream.getvalue()
        await asyncio.sleep(FLUSH_INTERVAL * 3)
        return before, first_batch, after_second_write

    before, first_batch, after_second_write = asyncio.run(three_lines())
    assert access._handler is not None, "the standard setup was not recognised"
    assert before == "", "lines were written one by one instead of in one batch"
    assert after_second_write == first_batch, "a line right after a write did not wait for the interval"
    lines = stream.getvalue().splitlines()
    assert [LINE.fullmatch(line).group("message") for line in lines] == [
        '127.0.0.1 "GET /v2/" 200 in=0 out=2 0.001s id=1',
        '127.0.0.1 "HEAD /v2/x/manifests/v1" 200 in=0 out=0 0.002s id=2',
        '127.0.0.1 "GET /v2/" 200 in=0 out=2 0.001s id=3',
    ]
    assert len(first_batch.splitlines()) == 2


def test_direct_text_matches_logging(loggers):
    parent, child = loggers
    stream = standard_handler(parent, "%(asctime)s %(levelname)s %(name)s (worker 2): %(message)s")
    access = AccessLog(child)
    access.write("one line")
    access.flush()
    child.info("one line")
    direct, logged = stream.getvalue().splitlines()
    assert LINE.fullmatch(direct).group("tail") == " (worker 2)"
    # The two differ only in the milliseconds of the time stamp, if at all.
    assert direct[:19] == logged[:19] or direct[:16] == logged[:16]
    assert direct[23:] == logged[23:]


@pytest.mark.parametrize("setup", ["other format", "filter", "file-like handler subclass", "level warning"])
def test_other_setups_go_through_logging(loggers, setup):
    parent, child = loggers
    stream = standard_handler(parent, "%(levelname)s %(message)s" if setup == "other format" else STANDARD)
    records = []
    if setup == "filter":
        parent.handlers[0].addFilter(lambda record: records.append(record) or True)
    elif setup == "file-like handler subclass":

        class Capture(logging.StreamHandler):
            def emit(self, record):
                records.append(record)
                super().emit(record)

        handler = Capture(stream)
        handler.setFormatter(logging.Formatter(STANDARD))
        parent.handlers[:] = [handler]
    elif setup == "level warning":
        parent.handlers[0].setLevel(logging.WARNING)
    access = AccessLog(child)
    access.write("through logging")
    assert access._handler is None
    if setup == "other format":
        assert stream.getvalue() == "INFO through logging\n"
    elif setup == "level warning":
        assert stream.getvalue() == ""
    else:
        assert [r.getMessage() for r in records] == ["through logging"]
