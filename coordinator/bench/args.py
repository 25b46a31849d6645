"""Argument types shared by the `txc bench` commands."""

from __future__ import annotations

import argparse


def positive_ints(text: str) -> list[int]:
    """`N` or `N,N,...`, each at least 1 (concurrency levels, group sizes, batch sizes)."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or N,N,...: {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("values must be >= 1")
    return values
