"""Ctrl+C and SIGTERM: whatever a run is doing, it ends KILLED with the signal named as its
reason, and the command exits 130 (Ctrl+C) or 143 (SIGTERM).

Two places need care. Inside Lightning's ``fit``, ``validate`` and ``test``, a
KeyboardInterrupt becomes ``sys.exit(1)`` and Ctrl+C is ignored from then on; and an
exception raised while Python runs a destructor is printed ("Exception ignored in …") and
lost. So the handler raises KeyboardInterrupt only outside the regions marked ``polled()``;
inside them it records the request, and the runner's callback raises ``Interrupted`` at the
next batch boundary. A request whose KeyboardInterrupt was swallowed stays pending and is
raised by the next ``check()``. A second signal always raises at once.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

REASONS = {signal.SIGINT: "interrupted by the user (Ctrl+C)", signal.SIGTERM: "terminated by SIGTERM"}
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal's number


class Interrupted(Exception):  # noqa: N818 - named for what happened, like KeyboardInterrupt
    """Raised at a safe point for a stop request made while the run was inside Lightning.
    An ``Exception``, not a KeyboardInterrupt, so that Lightning passes it on unchanged."""


class StopRequests:
    def __init__(self) -> None:
        self.pending: int | None = None  # the signal of a request not yet acted upon
        self.delivered: int | None = None  # the signal of the last request acted upon
        self.count = 0
        self.graceful = False
        self._polled = 0

    def install(self, graceful: bool = False, sigterm: bool = True) -> None:
        """Handle Ctrl+C and SIGTERM from now on (in the main thread: the CLI's commands).
        ``graceful`` (bench tune): a first request never raises where it lands; a run inside
        Lightning stops at its next batch, and otherwise the caller looks at ``pending``.
        ``sigterm=False`` (a Ray worker, whose SIGTERM belongs to Ray): SIGINT alone, which is
        how Ray cancels the task under way."""
        self.pending, self.delivered, self.count, self.graceful = None, None, 0, graceful
        signal.signal(signal.SIGINT, self._handle)
        if sigterm:
            signal.signal(signal.SIGTERM, self._handle)

    @property
    def installed(self) -> bool:
        return signal.getsignal(signal.SIGINT) == self._handle

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.pending is None:
            self.pending = signum
        if self.count > 1 or not (self._polled or self.graceful):
            raise KeyboardInterrupt

    @contextmanager
    def polled(self) -> Iterator[None]:
        """Inside: a first request waits for ``check()`` instead of raising where it lands."""
        self._polled += 1
        try:
            yield
        finally:
            self._polled -= 1

    def check(self) -> None:
        if self.pending is not None:
            raise Interrupted(REASONS.get(self.pending, f"signal {self.pending}"))

    def deliver(self) -> str:
        """Acknowledge the request an interrupted run is being recorded for: its reason."""
        signum = self.pending if self.pending is not None else signal.SIGINT  # a bare KeyboardInterrupt
        self.pending, self.delivered, self.count = None, signum, 0
        return REASONS.get(signum, f"signal {signum}")

    def reason(self) -> str:
        """The reason of the request pending or last acted upon ('' if none came)."""
        signum = self.pending if self.pending is not None else self.delivered
        return "" if signum is None else REASONS.get(signum, f"signal {signum}")

    def raise_pending(self) -> None:
        """Between runs: a request not acted upon yet stops the sweep now (in graceful mode, the
        caller decides when)."""
        if self.pending is not None and not self.graceful:
            self.deliver()
            raise KeyboardInterrupt

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.delivered if self.delivered is not None else signal.SIGINT, 130)

    def uninstall(self) -> None:
        """Back to Python's defaults (tests, and commands that end)."""
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        self.pending, self.count, self.graceful = None, 0, False

    def restore(self, previous: object) -> None:
        """Put back the SIGINT handler that was in place before Lightning set Ctrl+C to be ignored."""
        if signal.getsignal(signal.SIGINT) != previous:
            signal.signal(signal.SIGINT, previous)  # type: ignore[arg-type]


requests = StopRequests()
