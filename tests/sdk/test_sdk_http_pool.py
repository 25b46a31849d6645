"""The sync client's HTTP layer (`participant_sdk.http_pool`): keep-alive reuse, a connection
the server dropped while idle (or during a request) resent once on a fresh one, timeouts,
TLS verification, and leader following through `TxcClient` on top of it. Real sockets and
real servers throughout."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme
import uvicorn
from fake_coordinator import FakeCoordinator
from sdk_servers import free_port, serve

from participant_sdk import CoordinatorUnavailable, TxcClient, http_pool
from participant_sdk.http_pool import HttpPool, HttpTimeout, HttpTransportError

TIMEOUT_S = 2.0
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class RawServer:
    """A TCP server that reads one request head at a time and lets `behave(conn, n)` decide
    what to do with the n-th request (over all connections): counts requests and
    connections."""

    def __init__(self, behave: Callable[[socket.socket, int], bool]) -> None:
        self.behave = behave  # returns False to close the connection after this request
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests = 0
        self.connections = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buf) < length:
                    buf += conn.recv(65536)
                buf = buf[length:]
                with self._lock:
                    self.requests += 1
                    n = self.requests
                if not self.behave(conn, n):
                    return

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def raw_server(behave: Callable[[socket.socket, int], bool]) -> Iterator[RawServer]:
    server = RawServer(behave)
    try:
        yield server
    finally:
        server.close()


def answer(conn: socket.socket, n: int) -> bool:
    conn.sendall(ANSWER)
    return True


def test_keep_alive_reuses_one_connection() -> None:
    with raw_server(answer) as srv:
        pool = HttpPool(TIMEOUT_S)
        for _ in range(5):
            assert pool.request("POST", srv.url + "/x", b"{}").status_code == 200
        assert pool.connections_opened == 1 and srv.connections == 1
        pool.close()


def test_client_keeps_alive_against_a_real_coordinator(coord) -> None:
    with TxcClient(coord.url) as client:
        for _ in range(5):
            client.outcome("some-tx")
        assert client._pool is not None and client._pool.connections_opened == 1


def test_connection_closed_while_idle_is_not_reused() -> None:
    """The server closes after each answer without saying so: the idle check sees the EOF
    and the next request opens a new connection, without a failed attempt."""

    def once(conn: socket.socket, n: int) -> bool:
        conn.sendall(ANSWER)
        return False

    with raw_server(once) as srv:
        pool = HttpPool(TIMEOUT_S)
        for _ in range(3):
            assert pool.request("GET", srv.url + "/x").status_code == 200
            time.sleep(0.05)  # let the FIN arrive
        assert srv.requests == 3 and pool.connections_opened == 3
        pool.close()


def test_reused_connection_dropped_during_request_is_resent_once() -> None:
    """The close races the request (the server drops the kept-alive connection as the second
    request arrives): resent once on a fresh connection, which the server answers."""

    def drop_second(conn: socket.socket, n: int) -> bool:
        if n == 2:
            return False  # read it, close without answering
        conn.sendall(ANSWER)
        return True

    with raw_server(drop_second) as srv:
        pool = HttpPool(TIMEOUT_S)
        assert pool.request("POST", srv.url + "/x", b"{}").status_code == 200
        assert pool.request("POST", srv.url + "/x", b"{}").status_code == 200
        assert srv.requests == 3 and pool.connections_opened == 2
        pool.close()


def test_fresh_connection_dropped_is_an_error_not_a_resend() -> None:
    def drop(conn: socket.socket, n: int) -> bool:
        return False

    with raw_server(drop) as srv:
        pool = HttpPool(TIMEOUT_S)
        with pytest.raises(HttpTransportError):
            pool.request("POST", srv.url + "/x", b"{}")
        assert srv.requests == 1
        pool.close()


def test_timeout_is_bounded_and_retried_by_the_client() -> None:
    def never(conn: socket.socket, n: int) -> bool:
        time.sleep(3 * TIMEOUT_S)
        return False

    with raw_server(never) as srv:
        pool = HttpPool(0.3)
        started = time.monotonic()
        with pytest.raises(HttpTimeout):
            pool.request("GET", srv.url + "/x")
        assert time.monotonic() - started < TIMEOUT_S
        pool.close()
        with TxcClient(srv.url, timeout=0.3, retries=1) as client:
            with pytest.raises(CoordinatorUnavailable):
                client.outcome("tx-1")
        assert srv.requests == 3  # the pool's request, then the client's two attempts


def test_client_follows_txc_leader_and_stays_there(coord) -> None:
    follower = FakeCoordinator()
    follower.leader_url = coord.url
    with serve(follower.app) as f, TxcClient(f.url) as client:
        tx = client.begin()
        assert client.base_url == coord.url
        client.enlist(tx.txid, "p", "http://127.0.0.1:1/txc", "yes")
        client.commit(tx.txid)
        assert follower.count("begin") == 1 and follower.count("enlist") == 0
        assert coord.fake.txs[tx.txid].outcome == "commit"
        assert client._pool is not None and client._pool.connections_opened == 2


def test_oversized_answer_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(http_pool, "MAX_RESPONSE_BYTES", 1)
    with raw_server(answer) as srv:
        pool = HttpPool(TIMEOUT_S)
        with pytest.raises(HttpTransportError):
            pool.request("GET", srv.url + "/x")
        pool.close()


def test_tls_verified_against_the_given_ca(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(str(key_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    port = free_port()
    fake = FakeCoordinator()
    config = uvicorn.Config(
        fake.app, host="127.0.0.1", port=port, log_level="warning",
        ssl_certfile=str(cert_file), ssl_keyfile=str(key_file),
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        url = f"https://127.0.0.1:{port}/v1/transactions/x/outcome"
        trusting = ssl.create_default_context()
        ca.configure_trust(trusting)
        pool = HttpPool(TIMEOUT_S, ssl_context=trusting)
        for _ in range(2):
            assert pool.request("GET", url).json() == {"txid": "x", "outcome": "abort"}
        assert pool.connections_opened == 1
        pool.close()
        untrusting = HttpPool(TIMEOUT_S)  # httpx's default CAs: our throwaway CA is unknown
        with pytest.raises(HttpTransportError, match="CERTIFICATE_VERIFY_FAILED"):
            untrusting.request("GET", url)
        untrusting.close()
    finally:
        server.should_exit = True
        thread.join(10)


def test_closed_pool_refuses() -> None:
    pool = HttpPool(TIMEOUT_S)
    pool.close()
    with pytest.raises(HttpTransportError):
        pool.request("GET", "http://127.0.0.1:1/x")


def test_requests_in_flight_per_origin_are_bounded(monkeypatch) -> None:
    """With every slot busy, a request waits at most the timeout for one, then fails."""
    monkeypatch.setattr(http_pool, "MAX_CONNECTIONS_PER_ORIGIN", 1)
    release = threading.Event()

    def slow_first(conn: socket.socket, n: int) -> bool:
        if n != 1:
            conn.sendall(ANSWER)
            return True
        for i in range(len(ANSWER)):  # a byte at a time (each well within the read timeout)
            conn.sendall(ANSWER[i : i + 1])
            if not release.is_set():
                time.sleep(0.05)
        return True

    with raw_server(slow_first) as srv:
        pool = HttpPool(0.3)
        first: list[int] = []
        pool_http = HttpPool(TIMEOUT_S)  # its own slots: unaffected by `pool`'s
        t = threading.Thread(target=lambda: first.append(pool.request("GET", srv.url).status_code))
        t.start()
        time.sleep(0.1)
        with pytest.raises(HttpTimeout, match="no free connection"):
            pool.request("GET", srv.url)
        release.set()
        t.join(10)
        assert first == [200]
        assert pool.request("GET", srv.url).status_code == 200  # the slot came back
        assert pool_http.request("GET", srv.url).status_code == 200
        pool.close()
        pool_http.close()
