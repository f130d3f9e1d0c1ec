"""Process-wide concerns of every entry point: log handlers, stop signals, the final exit.

Light on purpose (no numpy, no cv2): `cli.main` installs logging before any command runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from types import FrameType
from typing import NoReturn

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


class _BelowWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


def install_logging(level: str, *, greengrass: bool = False) -> None:
    """Log handlers of a process: everything on stderr, or Greengrass's split streams.

    The nucleus logs a component's stdout at INFO and its stderr at WARN (adding its own
    timestamps), so under Greengrass DEBUG/INFO go to stdout and WARNING and above to stderr.
    """
    root = logging.getLogger()
    root.handlers.clear()
    formatter = logging.Formatter(LOG_FORMAT)
    if greengrass:
        low = logging.StreamHandler(sys.stdout)
        low.addFilter(_BelowWarning())
        high = logging.StreamHandler(sys.stderr)
        high.setLevel(logging.WARNING)
        handlers: list[logging.Handler] = [low, high]
    else:
        handlers = [logging.StreamHandler(sys.stderr)]
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level.upper())


@contextlib.contextmanager
def on_stop_signals(stop: Callable[[str], None]) -> Iterator[None]:
    """Call `stop(signal name)` on SIGTERM or SIGINT while the block runs; restore after.

    `stop` runs in the signal handler (the main thread, between bytecodes): it must only set
    an event or start a thread, never block.
    """

    def handler(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        logger.info("signal %s: stopping", name)
        stop(name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def exit_now(code: int, message: str | None = None) -> NoReturn:
    """End a serving process once everything is answered and closed, without C++ destructors.

    libdlr's TVM thread pools can still be winding down as the process exits, and that race
    aborts the process (SIGABRT, "terminate called without an active exception"; about 1 exit
    in 20 on a loaded 2-core machine), which a supervisor such as the Greengrass nucleus would
    count as a crash after a clean drain.
    """
    if message is not None:
        print(message, file=sys.stderr)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
