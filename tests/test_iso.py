"""The API's timestamps (coordinator/api.py `iso`): the fast path gives exactly the string of
datetime's isoformat, for any timestamp a clock can read (property test)."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from coordinator.http_common import iso, iso_slow


@given(st.floats(min_value=0, max_value=2**33, allow_nan=False, allow_infinity=False))
@example(0.0)
@example(1_790_000_000.9999995)  # microseconds round up into the next second
@example(1_790_000_000.0004999)
@example(1_790_000_000.999)
def test_iso_is_datetime_isoformat(ts: float) -> None:
    assert iso(ts) == iso_slow(ts)


def test_iso_shape() -> None:
    assert iso(None) is None
    assert iso(1_790_000_000.25) == "2026-09-21T14:13:20.250Z"
    assert iso(-1.5) == iso_slow(-1.5)
