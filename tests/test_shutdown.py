"""The stop bound (`coordinator.shutdown`): once a stop was requested, a command whose
orderly path hangs is still ended within the bound, its children killed, and the stacks of
its threads printed so the hang can be found. In real processes: what is checked is an exit
and a kill, which a mock would only pretend."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.helpers import gone

EXIT_TIMEOUT_S = 30.0  # far above the bounds the scripts below set

# A command that started a child, was asked to stop, and then hangs in its cleanup (here:
# a sleep that swallows every KeyboardInterrupt, as a stuck thread join would).
HANGING = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from coordinator import shutdown
    from coordinator.procs import Proc

    child = Proc("sleeper", ["-c", "import time; time.sleep(600)"], {}, "", Path(sys.argv[1]))
    child.start()
    shutdown.request_stop(bound_s=float(sys.argv[2]))
    print(child.proc.pid, flush=True)  # after the request: the test's signal is the second
    while True:
        try:
            time.sleep(0.05)
        except KeyboardInterrupt:
            pass
    """
)


def _run(
    tmp_path: Path, bound_s: float, *, second_signal: bool = False
) -> tuple[int, str, int, float]:
    script = tmp_path / "hang.py"
    script.write_text(HANGING)
    if second_signal:  # the script's own SIGTERM handler: the CLI's
        script.write_text(
            "import signal\nfrom coordinator import cli\n"
            "signal.signal(signal.SIGTERM, cli._interrupt)\n" + HANGING
        )
    p = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "child.log"), str(bound_s)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None
    child = int(p.stdout.readline())
    t0 = time.monotonic()
    if second_signal:
        p.send_signal(signal.SIGTERM)
    try:
        _, err = p.communicate(timeout=EXIT_TIMEOUT_S)
    finally:
        if p.poll() is None:
            p.kill()
    return p.returncode, err, child, time.monotonic() - t0


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_a_hanging_stop_is_ended_within_the_bound_and_its_children_killed(tmp_path: Path) -> None:
    code, err, child, took = _run(tmp_path, bound_s=1.0)
    assert code == 130, err
    assert took < EXIT_TIMEOUT_S
    assert "forcing the stop (not stopped 1s after)" in err
    assert "time.sleep(0.05)" in err or "hang.py" in err  # the stack of the stuck main thread
    deadline = time.monotonic() + 5
    while not gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(child)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_a_second_stop_request_forces_the_stop_at_once(tmp_path: Path) -> None:
    # The script requested a stop already (bound 600 s); SIGTERM is the second request.
    code, err, child, took = _run(tmp_path, bound_s=600.0, second_signal=True)
    assert code == 130, err
    assert took < EXIT_TIMEOUT_S
    assert "forcing the stop (a second stop request)" in err
    deadline = time.monotonic() + 5
    while not gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(child)


def test_forgotten_actions_do_not_run(tmp_path: Path) -> None:
    from coordinator import shutdown

    h = shutdown.on_forced_stop("a", lambda: None)
    assert h in shutdown._actions
    shutdown.forget(h)
    shutdown.forget(h)  # twice: harmless
    assert h not in shutdown._actions
    assert not shutdown.requested()
