"""HTTP client for the participant protocol (DESIGN §5): the coordinator's hot path.

aiohttp rather than httpx here: measured on this machine, aiohttp's client served about 20x
the requests/s of plain httpx at 32 concurrent requests (DESIGN §9), and phase 1 and 2 are
fan-outs of small requests. One shared session keeps connections to participants alive.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from coordinator import tracing
from coordinator.logs import traceparent_var
from participant_sdk.signing import signed_headers

MAX_REPLY_BYTES = 64 * 1024  # a participant's answer is a small JSON document
ACTIONS = ("prepare", "commit", "abort")


@dataclass(frozen=True)
class Reply:
    """A participant's answer. `status` is None when no HTTP answer arrived."""

    status: int | None
    body: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def error_code(self) -> str | None:
        err = self.body.get("error")
        if isinstance(err, dict):
            code = err.get("code")
            return str(code) if code is not None else None
        return None


class ProtocolCaller(Protocol):
    """What the engine needs: one protocol request, answered with a Reply (never raising for
    network trouble)."""

    async def call(
        self, base_url: str, action: str, txid: str, participant: str, timeout_s: float
    ) -> Reply: ...


def action_url(base: str, action: str) -> str:
    assert action in ACTIONS
    return base.rstrip("/") + "/" + action


class ParticipantClient:
    def __init__(
        self, *, token: str = "", connections: int = 200, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        """`token` is the participant secret: every request is signed with it."""
        assert connections > 0
        self.token = token
        self.connections = connections
        self.ssl_context = ssl_context
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.connections,
            limit_per_host=0,
            ttl_dns_cache=60,
            ssl=self.ssl_context or True,
        )
        self._session = aiohttp.ClientSession(connector=connector)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(
        self, base_url: str, action: str, txid: str, participant: str, timeout_s: float
    ) -> Reply:
        """One protocol request. Never raises for network trouble: that is a Reply too."""
        assert self._session is not None, "client not started"
        with tracing.span(
            f"txc.participant.{action}", **{"txc.txid": txid, "txc.participant": participant}
        ) as span:
            reply = await self._call(base_url, action, txid, participant, timeout_s)
            if span is not None:
                span.set_attribute("http.status_code", reply.status or 0)
            return reply

    async def _call(
        self, base_url: str, action: str, txid: str, participant: str, timeout_s: float
    ) -> Reply:
        assert self._session is not None, "client not started"
        payload = json.dumps({"txid": txid, "participant": participant}).encode()
        url = action_url(base_url, action)
        headers = {"Content-Type": "application/json"}
        traceparent = traceparent_var.get()
        if traceparent:
            headers["traceparent"] = traceparent  # W3C trace context, on to the participant
        if self.token:
            headers |= signed_headers(self.token, "POST", url, payload)
        try:
            async with self._session.post(
                url,
                data=payload,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=max(timeout_s, 0.001)),
                allow_redirects=False,
            ) as resp:
                raw = await resp.content.read(MAX_REPLY_BYTES)
                body: dict[str, Any] = {}
                if raw:
                    try:
                        parsed = json.loads(raw)
                        if isinstance(parsed, dict):
                            body = parsed
                    except ValueError:
                        pass
                error = None
                if resp.status >= 300:
                    error = f"{action}: HTTP {resp.status} {_describe(body, raw)}"
                return Reply(resp.status, body, error)
        except TimeoutError:
            return Reply(None, error=f"{action}: no answer within {timeout_s:.1f}s")
        except asyncio.CancelledError:
            raise
        except aiohttp.ClientError as e:
            return Reply(None, error=f"{action}: {type(e).__name__}: {e}"[:500])
        except OSError as e:
            return Reply(None, error=f"{action}: {type(e).__name__}: {e}"[:500])


def _describe(body: dict[str, Any], raw: bytes) -> str:
    err = body.get("error")
    if isinstance(err, dict):
        return f"{err.get('code', '')}: {err.get('message', '')}".strip(": ")
    if "reason" in body:
        return str(body["reason"])[:300]
    return raw[:200].decode(errors="replace")
