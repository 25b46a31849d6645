"""Configuration: defaults < TOML file < environment < explicit overrides, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.config import ConfigError, load


def test_file_then_environment_then_overrides(tmp_path: Path) -> None:
    f = tmp_path / "node.toml"
    f.write_text(
        'node_id = "n2"\nport = 7101\ndatabase_url = "postgresql://db/n2"\n'
        'peers = "1=http://a:7000,2=http://b:7000,3=http://c:7000"\nraft_id = 2\n'
        'cluster_secret = "file-secret"\nprepare_timeout_s = 4\n'
    )
    env = {"TXC_PORT": "7202", "TXC_JOIN": "true", "TXC_CLUSTER_SECRET": "env-secret"}
    s = load(f, env=env, prepare_timeout_s=2.5).validate()
    assert (s.node_id, s.port, s.raft_id, s.join) == ("n2", 7202, 2, True)
    assert s.cluster_secret == "env-secret" and s.prepare_timeout_s == 2.5
    assert s.peer_urls() == {1: "http://a:7000", 2: "http://b:7000", 3: "http://c:7000"}
    assert "env-secret" not in repr(s)  # secrets stay out of logs and tracebacks


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TXC_PORT": "seven"}, "TXC_PORT: expected int"),
        ({"TXC_JOIN": "maybe"}, "expected true or false"),
        (
            {"TXC_PEERS": "1=http://a:1", "TXC_RAFT_ID": "2", "TXC_CLUSTER_SECRET": "x"},
            "not in peers",
        ),
        ({"TXC_PEERS": "1=http://a:1", "TXC_RAFT_ID": "1"}, "cluster secret"),
        ({"TXC_PEERS": "one=ftp://a"}, "expected id=http"),
        ({"TXC_PREPARE_TIMEOUT_S": "0"}, "must be > 0"),
        ({"TXC_TLS_CERTFILE": "/nope.pem"}, "tls_certfile and tls_keyfile go together"),
        ({"TXC_ENVIRONMENT": "staging"}, "environment must be"),
        ({"TXC_PHASE2_BATCH_MAX": "0"}, "phase2_batch_max must be between 1 and 256"),
        ({"TXC_PHASE2_BATCH_MAX": "257"}, "phase2_batch_max must be between 1 and 256"),
        ({"TXC_PHASE2_BATCH_INFLIGHT": "0"}, "phase2_batch_inflight must be >= 1"),
    ],
)
def test_bad_settings_are_refused_with_the_reason(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(None, env={"TXC_DATABASE_URL": "postgresql://db/x", **env}).validate()


def test_unknown_keys_and_unreadable_files(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("colour = 'blue'\n")
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        load(f, env={})
    f.write_text("port = [")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(f, env={})
    with pytest.raises(ConfigError, match="database_url is not set"):
        load(None, env={}).validate()
