"""`txc bench soak`: a 3-node group under sustained load (being written)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--transactions", type=int, default=1_000_000)


def main(args: argparse.Namespace) -> int:
    raise SystemExit("txc bench soak: not written yet")
