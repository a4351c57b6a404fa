"""SIGTERM stops a run the way Ctrl-C does: the images already explained are written, the
report says `interrupted`, and the exit code says which signal it was (130 or 143).

Python turns SIGINT into KeyboardInterrupt; `stop_signals` makes SIGTERM (what `kill`,
systemd, Docker, Kubernetes and Slurm send) raise `Terminated`, a KeyboardInterrupt, so every
`except KeyboardInterrupt` that cleans up handles both. Torch-free.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_TERMINATED",
    "Terminated",
    "StopState",
    "stop_signals",
    "stop_requested",
    "signal_received",
]

EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130, the shell's code for Ctrl-C
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived; raised where Python raises KeyboardInterrupt for SIGINT."""


# Set by the handlers below. Inside `stop_signals`, a KeyboardInterrupt while no signal was
# received was raised by code (a user's model calling `raise KeyboardInterrupt`), and is that
# code's error, not a request to stop.
_received: list[int] = []
_watching: list[bool] = []


def signal_received() -> bool:
    """True once SIGINT or SIGTERM has arrived inside `stop_signals` (until the next one)."""
    return bool(_received)


def stop_requested() -> bool:
    """Whether a KeyboardInterrupt seen now must stop the run: a signal arrived, or nobody is
    watching for signals (a notebook's Ctrl-C cannot be told from code that raises it)."""
    return bool(_received) or not _watching


@dataclass
class StopState:
    """Which stop signal arrived last, if any."""

    terminated: bool = False

    def exit_code(self, exc: BaseException | None = None) -> int:
        if isinstance(exc, Terminated) or self.terminated:
            return EXIT_TERMINATED
        return EXIT_INTERRUPTED


@contextmanager
def stop_signals() -> Iterator[StopState]:
    """While inside, SIGTERM raises Terminated; the previous handler is restored on exit."""
    state = StopState()
    if threading.current_thread() is not threading.main_thread():  # handlers: main thread only
        yield state
        return

    def terminate(signum: int, frame: object) -> None:
        _received.append(signum)
        state.terminated = True
        raise Terminated

    def interrupt(signum: int, frame: object) -> None:
        _received.append(signum)
        raise KeyboardInterrupt

    previous_term = signal.signal(signal.SIGTERM, terminate)
    previous_int = signal.getsignal(signal.SIGINT)
    if previous_int is not signal.SIG_IGN:  # `cmd &` in a script ignores Ctrl-C: keep that
        signal.signal(signal.SIGINT, interrupt)
    _received.clear()
    _watching.append(True)
    try:
        yield state
    finally:
        _watching.pop()
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, previous_int)
