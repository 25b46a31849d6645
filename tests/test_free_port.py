"""free_port never hands the same port out twice in one process, even when the OS would
(the port is bound later by a child; two services of one test once raced for one port)."""

from __future__ import annotations

import socket

import pytest

from coordinator import embedded_pg


def test_a_port_the_os_offers_again_is_not_handed_out_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    offered = iter([40001, 40001, 40001, 40002])

    class FakeSocket:
        def __init__(self, *args: object) -> None:
            self.port = next(offered)

        def __enter__(self) -> FakeSocket:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def bind(self, addr: object) -> None:
            return None

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(embedded_pg, "_HANDED_OUT", set())
    monkeypatch.setattr(embedded_pg.socket, "socket", FakeSocket)
    assert embedded_pg.free_port() == 40001
    assert embedded_pg.free_port() == 40002  # 40001 was offered twice more and refused


def test_real_ports_are_distinct_and_bindable() -> None:
    ports = [embedded_pg.free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))
