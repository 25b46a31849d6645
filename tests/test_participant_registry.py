"""The participant registry file, the URL rule, and the settings that make a node open or
closed (coordinator/participants.py, coordinator/config.py). Pure: no server."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from coordinator.config import ConfigError, Settings, is_loopback
from coordinator.participants import Identity, Mode, Refusal, Registry, RegistryError, load

S = "s" * 20


def write(tmp_path: Path, body: str, mode: int = 0o600) -> str:
    path = tmp_path / "participants.toml"
    path.write_text(body)
    os.chmod(path, mode)
    return str(path)


GOOD = f"""
[participants.bank-a]
secrets = ["{S}", "{"t" * 20}"]
urls = ["http://10.0.0.5:8101/txc", "https://bank-a.internal/txc/"]
"""


def test_a_registry_file_loads(tmp_path: Path) -> None:
    ids = load(write(tmp_path, GOOD))
    ident = ids["bank-a"]
    assert ident.secrets == (S, "t" * 20)
    assert ident.urls == ("http://10.0.0.5:8101/txc", "https://bank-a.internal/txc")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("not toml [", "not TOML"),
        ("", "at least one"),
        ("[participants]\n", "at least one"),
        (f'[participants."bad name"]\nsecrets = ["{S}"]\nurls = ["http://a/txc"]\n', "name"),
        ('[participants.a]\nsecrets = ["short"]\nurls = ["http://a/txc"]\n', "16 characters"),
        (f'[participants.a]\nsecrets = ["{S}", "{S}"]\nurls = ["http://a/txc"]\n', "twice"),
        ('[participants.a]\nsecrets = []\nurls = ["http://a/txc"]\n', "1 to"),
        (f'[participants.a]\nsecrets = ["{S}"]\nurls = []\n', "1 to"),
        (f'[participants.a]\nsecrets = ["{S}"]\nurls = ["ftp://a/txc"]\n', "http"),
        (f'[participants.a]\nsecrets = ["{S}"]\nurls = ["http://a/txc?x=1"]\n', "query"),
        (f'[participants.a]\nsecrets = ["{S}"]\nurls = ["http://u@a/txc"]\n', "user info"),
        (f'[participants.a]\nsecret = ["{S}"]\nurls = ["http://a/txc"]\n', "unknown keys"),
        (f'[other]\n[participants.a]\nsecrets = ["{S}"]\nurls = ["http://a"]\n', "top-level"),
    ],
)
def test_a_bad_registry_is_refused_with_its_reason(tmp_path: Path, body: str, problem: str) -> None:
    with pytest.raises(RegistryError, match=problem):
        load(write(tmp_path, body))


def test_a_registry_readable_by_others_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="chmod 600"):
        load(write(tmp_path, GOOD, mode=0o644))


def test_a_missing_registry_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="participants_file"):
        load(str(tmp_path / "nope.toml"))


def test_urls_under_a_registered_prefix_only() -> None:
    ident = Identity("a", (S,), ("http://10.0.0.5:8101/txc",))
    assert ident.url_allowed("http://10.0.0.5:8101/txc")
    assert ident.url_allowed("http://10.0.0.5:8101/txc/")
    assert ident.url_allowed("http://10.0.0.5:8101/txc/v2")
    for url in (
        "http://10.0.0.5:8101/txcx",
        "http://10.0.0.5:81010/txc",
        "http://10.0.0.5:8101",
        "http://10.0.0.5:8101/txc/../admin",
        "http://10.0.0.5:8101/txc/./x",
        "http://10.0.0.5:8101/txc?to=elsewhere",
        "http://10.0.0.5:8101/txc#x",
        "http://10.0.0.5:8101@evil/txc",
        "http://evil/http://10.0.0.5:8101/txc",
        "https://10.0.0.5:8101/txc",
        "http://10.0.0.5:8101/txc\\..\\x",
    ):
        assert not ident.url_allowed(url), url


def test_modes_and_refusals() -> None:
    open_ = Registry()
    assert open_.mode is Mode.OPEN and open_.secrets("x") is None
    assert open_.refusal("x", "http://anything") is None and not open_.answers_signed
    shared = Registry(shared_secret=S)
    assert shared.mode is Mode.SHARED and shared.secrets("any-name") == (S,)
    assert not shared.answers_signed
    reg = Registry({"a": Identity("a", (S, "t" * 20), ("http://h/txc",))})
    assert reg.mode is Mode.REGISTRY and reg.answers_signed
    assert reg.signing_secret("a") == S and reg.secrets("b") is None
    assert reg.refusal("b", "http://h/txc") is Refusal.UNKNOWN
    assert reg.refusal("a", "http://other/txc") is Refusal.URL
    assert reg.refusal("a", "http://h/txc") is None


# -- who may listen where ------------------------------------------------------------------

BASE: dict[str, Any] = {"database_url": "postgresql://x/y"}


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_an_open_node_serves_loopback(host: str) -> None:
    assert is_loopback(host)
    Settings(**BASE, host=host).validate()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "coordinator.internal"])
def test_an_open_node_refuses_a_network_address(host: str) -> None:
    with pytest.raises(ConfigError, match="loopback only"):
        Settings(**BASE, host=host).validate()
    # Said explicitly, development may (a lab, a container network).
    Settings(**BASE, host=host, environment="development").validate()
    # With tokens it is no longer open.
    Settings(**BASE, host=host, api_tokens=f"client={S}").validate()


def test_registry_settings(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    Settings(**BASE, participants_file=path).validate()
    with pytest.raises(ConfigError, match="replaces the shared participant_token"):
        Settings(**BASE, participants_file=path, participant_token=S).validate()
    with pytest.raises(ConfigError, match="chmod 600"):
        Settings(**BASE, participants_file=write(tmp_path, GOOD, 0o640)).validate()
    prod = {**BASE, "environment": "production", "api_token": S}
    with pytest.raises(ConfigError, match="TXC_PARTICIPANTS_FILE"):
        Settings(**prod).validate()
    with pytest.raises(ConfigError, match="TXC_PARTICIPANTS_FILE"):  # shared: not enough
        Settings(**prod, participant_token=S).validate()
    Settings(**prod, participants_file=write(tmp_path, GOOD)).validate()
    # A platform's mounted secret (0644 in a private folder), said explicitly.
    shared_mount = write(tmp_path, GOOD, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        Settings(**prod, participants_file=shared_mount).validate()
    Settings(**prod, participants_file=shared_mount, participants_file_private=False).validate()
