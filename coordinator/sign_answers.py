"""Signs the coordinator's answer to every call a participant signed (participant_sdk/signing.py).

Why: an outcome ("commit" or "abort") or an enlistment's result travels to the participant
over a network that may be hostile; unsigned, anyone on the path could tell a participant
to commit work the coordinator aborted, or that an enlistment failed (so that it rolls back
work the coordinator will commit). The signature is bound to the request's own signature,
so an answer recorded once cannot answer another call.

Plain ASGI around the whole API, so that every answer is covered (errors, forwarded
answers, the hot routes) without each handler having to remember it. An answer is signed
with the secret of the participant the call names, whether or not the call's signature
held: an answer to a forged call is bound to the forged signature, which no real call of
that participant carries.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coordinator.participants import Registry
from participant_sdk.signing import (
    ANSWER_SIGNATURE_HEADER,
    MAX_SIGNATURE_CHARS,
    PARTICIPANT_HEADER,
    SIGNATURE_HEADER,
    answer_signature,
)

MAX_SIGNED_ANSWER_BYTES = 1024 * 1024  # a participant's calls are answered in < 64 KiB

_PARTICIPANT = PARTICIPANT_HEADER.lower().encode()
_SIGNATURE = SIGNATURE_HEADER.lower().encode()
_ANSWER = ANSWER_SIGNATURE_HEADER.lower().encode()


class SignAnswers:
    def __init__(self, app: ASGIApp, registry: Registry) -> None:
        self.app = app
        self.registry = registry

    def _secret_and_signature(self, scope: Scope) -> tuple[str, str] | None:
        name = sig = None
        for k, v in scope.get("headers") or []:
            if k == _PARTICIPANT and name is None:
                name = v.decode("latin-1")
            elif k == _SIGNATURE and sig is None:
                sig = v.decode("latin-1")
        if not name or not sig or len(sig) > MAX_SIGNATURE_CHARS:
            return None
        secret = self.registry.signing_secret(name)
        return (secret, sig) if secret else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self._secret_and_signature(scope) if scope["type"] == "http" else None
        if found is None:
            await self.app(scope, receive, send)
            return
        secret, request_sig = found
        start: Message | None = None
        parts: list[bytes] = []
        size = 0
        passing = False  # too big to sign: sent as it comes, unsigned

        async def signing_send(msg: Message) -> None:
            nonlocal start, size, passing
            if passing or msg["type"] not in ("http.response.start", "http.response.body"):
                await send(msg)
                return
            if msg["type"] == "http.response.start":
                start = msg
                return
            assert start is not None, "a body before its start"
            body = msg.get("body", b"")
            parts.append(body)
            size += len(body)
            if size > MAX_SIGNED_ANSWER_BYTES:
                passing = True
                await send(start)
                await send({**msg, "body": b"".join(parts)})
                return
            if msg.get("more_body", False):
                return
            whole = b"".join(parts)
            sig = answer_signature(secret, request_sig, int(start["status"]), whole)
            headers = [h for h in start.get("headers", []) if h[0].lower() != _ANSWER]
            headers.append((_ANSWER, sig.encode("latin-1")))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": whole})

        await self.app(scope, receive, signing_send)
