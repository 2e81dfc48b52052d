"""SIGTERM as an exception while a run is open, so that `with MLflowTracker.start(...)` ends it KILLED.

    if install_sigterm(): ...; uninstall_sigterm()   # what MLflowTracker.start / finish do

Without it, SIGTERM (a scheduler's cancel, `kill`) ends Python at once and leaves the run RUNNING
forever. The handler is shared by all open trackers (a sweep's parent and its current trial): it is
installed when the first one opens, and the previous handler restored when the last one closes.
Only the main thread may set signal handlers; a tracker opened elsewhere does without.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

log = logging.getLogger(__name__)

_users = 0
_previous: Any = None


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM while an MLflowTracker is open."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated("SIGTERM received")


def install_sigterm() -> bool:
    """Raise `Terminated` on SIGTERM from now on; False (nothing done) outside the main thread."""
    global _users, _previous
    if threading.current_thread() is not threading.main_thread():
        return False
    if _users == 0:
        _previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _raise_terminated)
    _users += 1
    return True


def uninstall_sigterm() -> None:
    """Undo one `install_sigterm` that returned True; the last one restores the previous handler."""
    global _users
    _users -= 1
    if _users == 0:
        # None means a handler not set from Python: the default is the closest we can restore.
        previous = signal.SIG_DFL if _previous is None else _previous
        try:
            signal.signal(signal.SIGTERM, previous)
        except ValueError:
            log.warning("tracker finished outside the main thread: SIGTERM handler left in place")
