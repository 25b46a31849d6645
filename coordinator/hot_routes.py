"""The three calls every transaction makes (begin, enlist, commit), served in plain ASGI.

Why: on the leader, FastAPI's per-request machinery (routing, dependency solving, body
parsing, the request/response wrappers) measured ~15% of the node's CPU under
`txc bench transfers`, for calls whose work is one log round. This middleware sits inside
the API's own (request context, body limit, forwarding to the leader) and answers these
calls itself when the request is the ordinary case: POST, JSON body, a known token of a role
that may make the call, a well-formed txid and a body the same Pydantic model accepts.

Everything else goes to the FastAPI app unchanged, with the body replayed: errors (401,
403, 400, 422, ...) therefore come from one place and keep their exact shape, and the
OpenAPI description stays the app's. Once the engine has been called, its outcome is
answered here with the same functions as the app's handlers (`answers`), never replayed:
a begin must not run twice.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coordinator.auth import Authenticator, AuthFailed, Principal, Role
from participant_sdk.signing import PARTICIPANT_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER

MAX_BODY_BYTES = 64 * 1024  # larger bodies take the app's path (and its 413)
_PARTICIPANTS = re.compile(r"^/v1/transactions/([^/]+)/participants$")
_COMMIT = re.compile(r"^/v1/transactions/([^/]+)/commit$")
_BEGIN_PATH = "/v1/transactions"
_AUTH_HEADERS = tuple(
    h.lower().encode()
    for h in ("authorization", PARTICIPANT_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)
)

Handler = Callable[[str | None, Any, Principal], Awaitable[Response]]


class HotRoute:
    """One call: who may make it, its body model (None: no body) and what it does."""

    def __init__(
        self,
        roles: set[Role],
        model: type[BaseModel] | None,
        run: Handler,
        body_optional: bool = False,
    ) -> None:
        self.roles = roles | {Role.ADMIN}
        self.model = model
        self.run = run
        self.body_optional = body_optional  # an empty body is None for `run`


class HotRoutes:
    def __init__(
        self,
        app: ASGIApp,
        auth: Authenticator,
        txid_re: re.Pattern[str],
        begin: HotRoute,
        enlist: HotRoute,
        commit: HotRoute,
        answers: Callable[[Exception], Response | None],
    ) -> None:
        self.app = app
        self.auth = auth
        self.txid_re = txid_re
        self.begin, self.enlist, self.commit = begin, enlist, commit
        self.answers = answers  # an exception -> the app's answer to it, or None

    def _route(self, path: str) -> tuple[HotRoute, str | None] | None:
        if path == _BEGIN_PATH:
            return self.begin, None
        m = _PARTICIPANTS.match(path)
        if m:
            return self.enlist, m.group(1)
        m = _COMMIT.match(path)
        if m:
            return self.commit, m.group(1)
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = (
            self._route(scope.get("path", ""))
            if scope["type"] == "http" and scope.get("method") == "POST"
            else None
        )
        if found is None:
            await self.app(scope, receive, send)
            return
        route, txid = found
        headers: dict[bytes, bytes] = {}
        for k, v in scope.get("headers") or []:
            headers.setdefault(k, v)  # the first of repeated headers, as the app reads them
        try:
            body, more = await _read(receive)
        except Exception as e:  # the body limit refused it (413), in the app's words
            answer = self.answers(e)
            if answer is None:
                raise
            await answer(scope, receive, send)
            return
        who = None if more else self._admitted(route, headers, txid, scope, body)
        fast = who is not None
        parsed: Any = None
        if fast and route.model is not None and not (route.body_optional and not body):
            ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            try:
                fast = ctype == b"application/json"
                parsed = route.model.model_validate_json(body) if fast else None
            except ValidationError:
                fast = False
        if not fast:
            await self.app(scope, _replay(body, more, receive), send)
            return
        try:
            assert who is not None
            response = await route.run(txid, parsed, who)
        except Exception as e:
            answer = self.answers(e)
            if answer is None:
                raise
            response = answer
        await response(scope, receive, send)

    def _admitted(
        self,
        route: HotRoute,
        headers: dict[bytes, bytes],
        txid: str | None,
        scope: Scope,
        body: bytes,
    ) -> Principal | None:
        """The caller, when it may make this call here; None sends the call to the app."""
        if txid is not None and not self.txid_re.match(txid):
            return None
        text = {
            k.decode("latin-1"): v.decode("latin-1")
            for k in _AUTH_HEADERS
            if (v := headers.get(k)) is not None
        }
        try:
            p = self.auth.principal(text, "POST", scope.get("path", ""), body)
        except AuthFailed:
            return None
        return p if p.role in route.roles else None


async def _read(receive: Receive) -> tuple[bytes, bool]:
    """The body, and whether reading stopped early (over MAX_BODY_BYTES: the app decides)."""
    parts: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            return b"".join(parts), True  # a disconnect: let the app see it
        chunk = msg.get("body", b"")
        parts.append(chunk)
        size += len(chunk)
        if not msg.get("more_body", False):
            return b"".join(parts), False
        if size > MAX_BODY_BYTES:
            return b"".join(parts), True


def _replay(body: bytes, more: bool, receive: Receive) -> Receive:
    """A receive that hands out the body already read, then the rest from `receive`."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()

    return replay
