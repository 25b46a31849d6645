"""The coordinator's participant client and a connection the participant's server closed
while it was kept alive (its keep-alive timeout racing our next message): the message is
sent again at once on a fresh connection, not left to the next phase-2 backoff (which can
be a minute). A real socket server: the race is in how the connection ends."""

from __future__ import annotations

import asyncio

from coordinator.participant_client import STALE_CONNECTION_RETRIES, ParticipantClient

ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return head


async def test_a_message_on_a_connection_the_server_closed_is_sent_again_at_once() -> None:
    seen: list[int] = []  # per request: which connection (1, 2, ...) it came on

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = len({*seen}) + 1
        served = 0
        while await _read_request(reader) is not None:
            seen.append(conn)
            if conn == 1 and served == 1:  # the second request on the first connection:
                break  # closed unanswered, as a server whose keep-alive ran out does
            writer.write(ANSWER)
            await writer.drain()
            served += 1
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = ParticipantClient()
    await client.start()
    try:
        base = f"http://127.0.0.1:{port}"
        first = await client.call(base, "commit", "tx-1", "p", 5.0)
        assert (first.status, first.error) == (200, None)
        again = await client.call(base, "commit", "tx-2", "p", 5.0)
        assert (again.status, again.error) == (200, None), again
        assert seen == [1, 1, 2]  # sent on the stale connection, then at once on a new one
        assert STALE_CONNECTION_RETRIES == 1
    finally:
        await client.close()
        server.close()
        await server.wait_closed()
