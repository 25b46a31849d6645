"""The participant registry reloaded while a real node runs (coordinator/registry_watch.py):
a participant added to the file can enlist within seconds, without a restart; a broken file
or one that drops a participant still enlisted changes nothing; what the node shows an
operator carries no secret."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sdk_real import serve_coordinator

from coordinator.participants import Registry, load
from coordinator.registry_watch import RegistryWatch
from participant_sdk.signing import participant_headers

SECRET_A = "bank-a-secret-0123456789"
SECRET_C = "bank-c-secret-0123456789"
SECRET_C2 = "bank-c-rotated-0123456789"
ADMIN = "admin-token-0123456789"
CLIENT = "client-token-0123456789"
URL_A, URL_C = "http://127.0.0.1:9/a/txc", "http://127.0.0.1:9/c/txc"
RELOAD_TIMEOUT_S = 15.0  # several REGISTRY_POLL_S


def write(path: Path, entries: dict[str, tuple[list[str], str]], mode: int = 0o600) -> None:
    """Atomically, as an operator's `mv` would: a node never reads half a file."""
    body = "".join(
        f"[participants.{n}]\nsecrets = {json.dumps(s)}\nurls = [{json.dumps(u)}]\n\n"
        for n, (s, u) in entries.items()
    )
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(body)
    tmp.chmod(mode)
    os.replace(tmp, path)


def eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + RELOAD_TIMEOUT_S
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def enlist(node: str, txid: str, name: str, secret: str, url: str) -> httpx.Response:
    target = f"{node}/v1/transactions/{txid}/participants"
    body = json.dumps({"name": name, "url": url}).encode()
    headers = participant_headers(name, secret, "POST", target, body)
    return httpx.post(target, content=body, headers=headers | {"Content-Type": "application/json"})


def begin(node: str) -> str:
    r = httpx.post(
        f"{node}/v1/transactions", json={}, headers={"Authorization": f"Bearer {CLIENT}"}
    )
    assert r.status_code == 201, r.text
    txid: str = r.json()["txid"]
    return txid


def view(node: str) -> dict[str, Any]:
    r = httpx.get(f"{node}/v1/cluster/participants", headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200, r.text
    assert SECRET_A not in r.text and SECRET_C not in r.text and SECRET_C2 not in r.text
    out: dict[str, Any] = r.json()
    return out


def names(node: str) -> list[str]:
    return [p["name"] for p in view(node)["participants"]]


def test_a_registry_edit_is_used_without_a_restart(pg: Any, tmp_path: Path) -> None:
    registry = tmp_path / "participants.toml"
    write(registry, {"bank-a": ([SECRET_A], URL_A)})
    with serve_coordinator(
        pg,
        participant_token="",
        participants_file=str(registry),
        api_token="",
        api_tokens=f"admin={ADMIN},client={CLIENT}",
    ) as node:
        r = httpx.get(f"{node}/v1/cluster/participants", headers={"Authorization": "Bearer x"})
        assert r.status_code == 401
        first = view(node)
        assert first["mode"] == "registry" and names(node) == ["bank-a"]
        assert first["participants"][0] == {"name": "bank-a", "urls": [URL_A], "secrets": 1}
        tx = begin(node)
        r = enlist(node, tx, "bank-c", SECRET_C, URL_C)  # an unknown signer
        assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthenticated")

        # Added: bank-c enlists, no restart.
        write(registry, {"bank-a": ([SECRET_A], URL_A), "bank-c": ([SECRET_C], URL_C)})
        eventually(lambda: names(node) == ["bank-a", "bank-c"], "bank-c never registered")
        assert view(node)["fingerprint"] != first["fingerprint"]
        assert view(node)["reload"]["reloads"] == 1
        assert enlist(node, tx, "bank-c", SECRET_C, URL_C).status_code in (200, 201)

        # A broken file: the error is shown, the registry in use stays.
        (registry).write_text("[participants.bank-c\n")
        eventually(lambda: view(node)["reload"]["error"] is not None, "no error shown")
        assert "not TOML" in view(node)["reload"]["error"]
        assert names(node) == ["bank-a", "bank-c"]

        # Dropping bank-c while it is enlisted in `tx` (unfinished): refused, kept.
        write(registry, {"bank-a": ([SECRET_A], URL_A)})
        eventually(
            lambda: "enlisted in unfinished" in (view(node)["reload"]["error"] or ""),
            "the removal of an enlisted participant was not refused",
        )
        assert names(node) == ["bank-a", "bank-c"]

        # Rotated (a second secret, then only the new one): the new one signs.
        write(registry, {"bank-a": ([SECRET_A], URL_A), "bank-c": ([SECRET_C2], URL_C)})
        eventually(lambda: view(node)["reload"]["error"] is None, "rotation not loaded")
        tx2 = begin(node)
        r = enlist(node, tx2, "bank-c", SECRET_C, URL_C)
        assert r.status_code == 401, r.text  # the old secret no longer speaks for bank-c
        assert enlist(node, tx2, "bank-c", SECRET_C2, URL_C).status_code in (200, 201)


def _watch(tmp_path: Path, in_use: set[str]) -> tuple[Path, Registry, RegistryWatch]:
    path = tmp_path / "participants.toml"
    write(path, {"bank-a": ([SECRET_A], URL_A), "bank-c": ([SECRET_C], URL_C)})
    registry = Registry(load(str(path)))
    return path, registry, RegistryWatch(str(path), registry, lambda: in_use)


def test_the_watch_applies_all_of_a_file_or_none(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    busy: set[str] = {"bank-c"}
    path, registry, watch = _watch(tmp_path, busy)
    assert watch.check() is False  # unchanged

    write(path, {"bank-a": ([SECRET_A], URL_A)}, mode=0o644)
    with caplog.at_level(logging.ERROR, "txc.registry"):
        assert watch.check() is False
        assert watch.check() is False  # the same error is logged once
    assert "readable by others" in (watch.error or "")
    assert len([r for r in caplog.records if "not reloaded" in r.message]) == 1
    assert set(registry.identities) == {"bank-a", "bank-c"}

    write(path, {"bank-a": ([SECRET_A], URL_A)})
    assert watch.check() is False and "bank-c" in (watch.error or "")
    busy.clear()  # its transactions finished: the same file now applies
    assert watch.check() is True
    assert set(registry.identities) == {"bank-a"} and watch.error is None
    assert SECRET_A not in json.dumps(registry.describe())
