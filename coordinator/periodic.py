"""A task that runs a pass every `interval_s` until stopped (retention, history deletion).

A failed pass is logged and the next one tries again: these passes only tidy up, so waiting
loses nothing, and a crash-only stop would be worse than a late one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any


class Periodic:
    name = "txc-periodic"
    log = logging.getLogger("txc")

    def __init__(self, interval_s: float) -> None:
        assert interval_s > 0
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def due(self) -> bool:
        """Whether this node runs the next pass (the leader's tasks say no on a follower)."""
        return True

    async def run_once(self) -> Any:
        raise NotImplementedError

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            if not self.due():
                continue
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.failed(e)

    def failed(self, e: Exception) -> None:
        self.log.warning("%s pass failed: %s: %s", self.name, type(e).__name__, e)
