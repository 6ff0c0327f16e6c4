"""SIGINT / SIGTERM: the first asks the loop to stop at the next step boundary (it then writes
a resumable checkpoint); a second one stops at once (every file is written atomically, so what
is on disk stays valid)."""

from __future__ import annotations

import signal
import threading

# the requests whose handlers are installed, innermost last: a verb installs one when it starts
# (a signal during start-up is a clean stop too), and the fit inside it uses that one
_ACTIVE: list[StopRequest] = []


def active() -> StopRequest | None:
    """The installed stop request, if a caller (the `run` verb) installed one."""
    return _ACTIVE[-1] if _ACTIVE else None


class StopRequest:
    """A flag the handler sets and the loop reads; `count` is how many signals arrived."""

    __slots__ = ("count", "signum", "_previous")

    def __init__(self) -> None:
        self.count = 0
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        self.count += 1
        self.signum = signum
        if self.count > 1:
            raise KeyboardInterrupt(f"second signal {signal.Signals(signum).name}: stopping now")

    def install(self) -> StopRequest:
        # signal handlers can only be set from the main thread; elsewhere the run is unstoppable
        # by signal, which is what a library caller in a worker thread expects
        """Install the SIGINT / SIGTERM handlers (main thread only); returns self."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        _ACTIVE.append(self)
        return self

    def restore(self) -> None:
        """Put back the handlers that were there before `install`."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if self in _ACTIVE:
            _ACTIVE.remove(self)
