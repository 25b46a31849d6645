"""A bound on how long a command takes to stop once asked to, whatever state it is in.

`txc up`, the benchmarks and `txc recover` start processes (coordinator nodes, banks, a
PostgreSQL server) and stop them in `finally` blocks when Ctrl-C or SIGTERM arrives. That
orderly path is the normal one, but an interrupt lands wherever the main thread happens to
be: inside an event loop's callback, a driver's wait, a thread pool's shutdown. One such
landing left a CI run's benchmark alive for over a minute after SIGTERM, with every
process it had started. A user who presses Ctrl-C, or a supervisor that sends SIGTERM,
must get its machine back in bounded time.

So the first stop request arms a watchdog thread. If the command has not exited within
`STOP_BOUND_S`, the watchdog writes every thread's stack to stderr (the one way to learn
where the orderly path hung), runs the last-resort actions registered here (SIGKILL each
child still running, an immediate stop of the embedded PostgreSQL) and ends the process
with `EXIT_INTERRUPTED`. A second stop request does the same at once: the user has said
twice that they mean it.

Last-resort actions must be quick and must not block (no waiting for the killed process):
they run on the watchdog thread while the main thread may be holding any lock.
"""

from __future__ import annotations

import faulthandler
import itertools
import os
import sys
import threading
from collections.abc import Callable

STOP_BOUND_S = 45.0  # from the first stop request to a forced exit; the orderly path takes ~1 s
EXIT_INTERRUPTED = 130  # the shell's code for "stopped by a signal" (128 + SIGINT)
MAX_ACTIONS = 1024  # last-resort actions registered at once (one per child process)

_lock = threading.Lock()
_actions: dict[int, tuple[str, Callable[[], None]]] = {}
_ids = itertools.count(1)
_armed: threading.Timer | None = None


def on_forced_stop(what: str, action: Callable[[], None]) -> int:
    """Register `action` to run if the stop bound runs out; returns a handle for `forget`."""
    with _lock:
        assert len(_actions) < MAX_ACTIONS, f"{len(_actions)} last-resort actions: a leak"
        handle = next(_ids)
        _actions[handle] = (what, action)
        return handle


def forget(handle: int) -> None:
    """The orderly path stopped what `handle` was for."""
    with _lock:
        _actions.pop(handle, None)


def requested() -> bool:
    """Whether a stop was requested (the watchdog is armed)."""
    return _armed is not None


def request_stop(bound_s: float = STOP_BOUND_S) -> None:
    """Called on each stop request (the signal handler): arms the watchdog the first time,
    forces the stop at once the second time."""
    global _armed
    with _lock:
        first = _armed is None
        if first:
            _armed = threading.Timer(bound_s, _force, args=(f"not stopped {bound_s:.0f}s after",))
            _armed.daemon = True
            _armed.start()
    if not first:
        _force("a second stop request")


def disarm() -> None:
    """The command finished stopping (tests run several commands in one process)."""
    global _armed
    with _lock:
        if _armed is not None:
            _armed.cancel()
        _armed = None


def _force(why: str) -> None:
    print(f"txc: forcing the stop ({why}); stacks follow", file=sys.stderr, flush=True)
    try:
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    except (OSError, ValueError, RuntimeError):  # stderr closed or not a real file
        pass
    with _lock:
        actions = list(_actions.values())
    for what, action in actions:
        try:
            action()
        except Exception as e:  # the next action matters more than this one's failure
            print(f"txc: could not stop {what}: {e}", file=sys.stderr, flush=True)
    os._exit(EXIT_INTERRUPTED)
