"""A minimal API client written from the README alone (no SDK), for benchmarks and tests: it
follows `Txc-Leader`, moves to another node when one is unreachable, and retries (every call
it is used for is idempotent)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

RETRY_FOR_S = 30.0


class LeaderFollowingClient:
    def __init__(self, urls: list[str], retry_for_s: float = RETRY_FOR_S) -> None:
        self.urls = list(urls)
        self.current = self.urls[0]
        self.retry_for_s = retry_for_s
        self.http = httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=64))

    async def aclose(self) -> None:
        await self.http.aclose()

    async def request(self, method: str, path: str, json: Any = None) -> httpx.Response:
        """Retries on no answer and on 503 (every call used here is idempotent)."""
        deadline = time.monotonic() + self.retry_for_s
        i = 0
        while True:
            try:
                r = await self.http.request(method, self.current + path, json=json)
                if r.status_code != 503:
                    return r
                leader = r.headers.get("txc-leader")
                if leader and leader != self.current:
                    self.current = leader
                    continue
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{method} {path}: no answer from any node in {self.retry_for_s}s"
                )
            i += 1
            self.current = self.urls[i % len(self.urls)]
            await asyncio.sleep(0.05)
