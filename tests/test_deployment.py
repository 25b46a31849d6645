"""The deployment files (Dockerfile, docker-compose.yml, deploy/) checked against the real code.

No Docker engine runs here, so nothing is started: the compose file is parsed and every value
the services depend on is fed to the code that will read it in the containers — the settings
schema (`coordinator.config.load` / `validate`), the `txc` argument parser, the demo bank's
`main` (with its app factory and `uvicorn.run` replaced), and the image's entrypoint, which
turns `*_FILE` variables (Docker secrets) into values.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import inspect
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import tomllib
from fnmatch import fnmatch
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import uvicorn
import yaml
from sqlalchemy.engine import make_url

import txc_demo.bank as bank
import txc_demo.transfer as transfer
from coordinator import participants
from coordinator.auth import Role, parse_tokens
from coordinator.cli import build_parser
from coordinator.config import Settings, load
from coordinator.node import build_app

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENTRYPOINT_SCRIPT = ROOT / "deploy" / "txc-entrypoint.py"
MAKE_SECRETS = ROOT / "deploy" / "make-secrets.sh"
SECRETS_MOUNT = "/run/secrets/"

NODES = ["node1", "node2", "node3"]
BANKS = ["bank-a", "bank-b"]
BANK_ENTRYPOINT = ["txc-entrypoint", "python", "-m", "txc_demo.bank"]
TRANSFER = "transfer"
TRANSFER_ENTRYPOINT = ["txc-entrypoint", "python", "-m", "txc_demo.transfer"]
LONG_RUNNING_RESTART = {"always", "unless-stopped", "on-failure"}
SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD")

COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
DECLARED_SECRETS: dict[str, dict[str, Any]] = COMPOSE.get("secrets") or {}
SETTING_NAMES = {f.name for f in dataclasses.fields(Settings)}


def _entrypoint_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("txc_entrypoint", ENTRYPOINT_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ENTRYPOINT = _entrypoint_module()


# ---- helpers: read the compose file the way Compose and the containers do ----------------


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def environment(service: str) -> dict[str, str]:
    """The service's `environment:`, in either of Compose's two spellings."""
    env = SERVICES[service].get("environment") or {}
    if isinstance(env, list):
        pairs = (item.partition("=") for item in env)
        return {k: v for k, _, v in pairs}
    return {k: _text(v) for k, v in env.items()}


def mounted_secrets(service: str) -> set[str]:
    out = set()
    for item in SERVICES[service].get("secrets") or []:
        out.add(item if isinstance(item, str) else item["source"])
    return out


def secret_target(service: str, name: str) -> str:
    for item in SERVICES[service].get("secrets") or []:
        if isinstance(item, str) and item == name:
            return SECRETS_MOUNT + name
        if isinstance(item, dict) and item["source"] == name:
            target = str(item.get("target", name))
            return target if target.startswith("/") else SECRETS_MOUNT + target
    raise AssertionError(f"{service} does not mount the secret {name}")


def secret_of(service: str, path: str) -> str:
    """Which declared secret the file `path` is, inside `service`."""
    for name in mounted_secrets(service):
        if secret_target(service, name) == path:
            return name
    raise AssertionError(f"{service}: {path} is not one of the secrets it mounts")


def make_secrets(into: Path) -> Path:
    """Run deploy/make-secrets.sh as if deploy/ were `into`; returns the secrets folder."""
    script = into / "make-secrets.sh"
    shutil.copy(MAKE_SECRETS, script)
    subprocess.run(["sh", str(script)], check=True, capture_output=True)
    return into / "secrets"


@functools.cache
def generated_secrets() -> dict[str, str]:
    """The secrets deploy/make-secrets.sh makes (in a scratch folder), by file name."""
    with tempfile.TemporaryDirectory() as scratch:
        folder = make_secrets(Path(scratch))
        return {p.name: p.read_text() for p in folder.iterdir() if p.name != ".gitignore"}


def secret_value(name: str) -> str:
    """The content of the declared secret `name`, as make-secrets.sh writes it."""
    return generated_secrets()[Path(DECLARED_SECRETS[name]["file"]).name]


def container_env(service: str) -> dict[str, str]:
    """The environment the service's command sees once the image's entrypoint has read the
    secret files (made by deploy/make-secrets.sh)."""

    def read(path: str) -> str:
        return secret_value(secret_of(service, path))

    resolved: dict[str, str] = ENTRYPOINT.resolve(environment(service), read)
    return resolved


def postgres_password(service: str) -> str:
    """The password the postgres image sets (it reads POSTGRES_PASSWORD_FILE itself)."""
    return secret_value(secret_of(service, environment(service)["POSTGRES_PASSWORD_FILE"]))


def command(service: str) -> list[str]:
    cmd = SERVICES[service].get("command")
    assert isinstance(cmd, list), f"{service}: write `command:` as a list (exec form)"
    return [str(c) for c in cmd]


def txc_services() -> list[str]:
    """Services that run the image built from the Dockerfile."""
    return [name for name, s in SERVICES.items() if "build" in s]


def postgres_services() -> list[str]:
    return [name for name, s in SERVICES.items() if str(s.get("image", "")).startswith("postgres:")]


@functools.cache
def mounted_file(name: str) -> str:
    """A declared secret's content in a real file (mode 0644, as Docker mounts it), for
    settings that name a file rather than take its value (TXC_PARTICIPANTS_FILE)."""
    folder = Path(tempfile.mkdtemp(prefix="txc-compose-secrets-"))
    path = folder / name
    path.write_text(secret_value(name))
    path.chmod(0o644)
    return str(path)


def node_settings(service: str) -> Settings:
    """The settings the node loads in its container; a file setting that points into
    /run/secrets reads the same content from a scratch copy."""
    env = container_env(service)
    for key, value in env.items():
        if key.endswith("_FILE") and value.startswith(SECRETS_MOUNT):
            env[key] = mounted_file(secret_of(service, value))
    return load(env=env).validate()


def published(service: str) -> list[tuple[int, int]]:
    """(host port, container port) for each `ports:` entry."""
    out = []
    for item in SERVICES[service].get("ports") or []:
        if isinstance(item, dict):
            out.append((int(item["published"]), int(item["target"])))
            continue
        parts = str(item).split("/")[0].split(":")
        assert len(parts) in (2, 3), f"{service}: give ports as [ip:]host:container, got {item}"
        out.append((int(parts[-2]), int(parts[-1])))
    return out


def healthcheck(service: str) -> list[str] | None:
    check = SERVICES[service].get("healthcheck")
    if not check or check.get("disable"):
        return None
    test = check["test"]
    return [str(t) for t in test] if isinstance(test, list) else ["CMD-SHELL", str(test)]


def depends_on(service: str) -> dict[str, str]:
    deps = SERVICES[service].get("depends_on") or {}
    if isinstance(deps, list):
        return {d: "service_started" for d in deps}
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def database_host(url: str) -> str:
    host = make_url(url).host
    assert host, f"no host in {url}"
    return host


@dataclasses.dataclass
class BankRun:
    name: str
    database_url: str
    coordinator_url: str
    public_url: str
    kwargs: dict[str, Any]
    host: str
    port: int


def use_container_env(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("TXC_") or k.startswith("PG")]:
        monkeypatch.delenv(key)
    for key, value in container_env(service).items():
        monkeypatch.setenv(key, value)


def run_bank_main(service: str, monkeypatch: pytest.MonkeyPatch) -> BankRun:
    """Run `python -m txc_demo.bank <command>` as the container would, up to the point where
    it would serve: bank.py builds its parser inside `main`, so the real parser is exercised
    by calling `main` with the app factory and `uvicorn.run` replaced by recorders."""
    use_container_env(service, monkeypatch)
    created: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    served: list[dict[str, Any]] = []

    app = SimpleNamespace(state=SimpleNamespace(engine=None))  # what main reads of an app

    def fake_create_app(*args: Any, **kwargs: Any) -> SimpleNamespace:
        created.append((args, kwargs))
        return app

    def fake_run(served_app: Any, **kwargs: Any) -> None:
        assert served_app is app
        served.append(kwargs)

    monkeypatch.setattr(bank, "create_app", fake_create_app)
    monkeypatch.setattr(bank, "probe_database", lambda engine: None)  # no server here
    monkeypatch.setattr(uvicorn, "run", fake_run)
    try:
        bank.main(command(service))
    except SystemExit as e:  # argparse refused the command line
        raise AssertionError(f"{service}: txc_demo.bank rejects {command(service)}") from e
    assert len(created) == 1 and len(served) == 1
    (name, database_url, coordinator_url, public_url), kwargs = created[0]
    return BankRun(
        name,
        database_url,
        coordinator_url,
        public_url,
        kwargs,
        served[0]["host"],
        int(served[0]["port"]),
    )


def parse_dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


def dockerfile_values(instruction: str) -> list[str]:
    return [args for inst, args in parse_dockerfile() if inst == instruction]


def final_stage() -> list[tuple[str, str]]:
    instructions = parse_dockerfile()
    last_from = max(i for i, (inst, _) in enumerate(instructions) if inst == "FROM")
    return instructions[last_from:]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


# ---- the services that must exist ---------------------------------------------------------


def test_the_expected_services_exist() -> None:
    expected = {*NODES, *BANKS, *(f"pg-{n}" for n in NODES), *(f"pg-{b}" for b in BANKS)}
    assert expected <= set(SERVICES)
    nodes = [s for s in txc_services() if "entrypoint" not in SERVICES[s] and "serve" in command(s)]
    assert sorted(nodes) == NODES
    banks = [s for s in txc_services() if SERVICES[s].get("entrypoint") == BANK_ENTRYPOINT]
    assert sorted(banks) == BANKS
    assert sorted(postgres_services()) == sorted(
        [f"pg-{n}" for n in NODES] + [f"pg-{b}" for b in BANKS]
    )


# ---- coordinator nodes: the settings schema -------------------------------------------------


@pytest.mark.parametrize("service", NODES)
def test_node_variables_are_real_settings(service: str) -> None:
    for key in environment(service):
        if key == "PGPASSWORD_FILE":  # for libpq, through the entrypoint
            continue
        assert key.startswith("TXC_"), f"{service}: {key} is not a txc setting"
        setting = key.removeprefix("TXC_").lower()
        if setting not in SETTING_NAMES:  # NAME_FILE: NAME's value is in that file
            setting = setting.removesuffix("_file")
        assert setting in SETTING_NAMES, f"{service}: {key} names no field of Settings"


@pytest.mark.parametrize("index,service", list(enumerate(NODES, start=1)))
def test_node_settings_load_and_validate(index: int, service: str) -> None:
    s = node_settings(service)
    assert s.node_id == service
    assert s.raft_id == index
    assert s.environment == "production"
    assert s.host == "0.0.0.0"
    assert s.advertise_url == f"http://{service}:{s.port}"
    # secrets come from the mounted files, not from the compose file
    assert s.cluster_secret == secret_value("cluster_secret")
    # each bank has its own identity in the registry; no secret is shared between them
    assert s.participant_token == ""
    registry = participants.load(s.participants_file, private=s.participants_file_private)
    assert sorted(registry) == BANKS
    for b in BANKS:
        assert registry[b].secrets == (secret_value(f"bank_{b[-1]}_secret"),)
    tokens = parse_tokens(s.api_tokens, s.api_token)
    assert tokens[secret_value("admin_token")] == Role.ADMIN
    assert sorted(tokens.values()) == sorted(Role), "one token for each role"


def test_peers_name_exactly_the_three_nodes_with_their_ports() -> None:
    settings = {n: node_settings(n) for n in NODES}
    expected = {i: f"http://{n}:{settings[n].port}" for i, n in enumerate(NODES, start=1)}
    for service, s in settings.items():
        assert s.peer_urls() == expected, service
        assert s.peer_urls()[s.raft_id] == s.advertise_url
    assert len({s.cluster_secret for s in settings.values()}) == 1


@pytest.mark.parametrize("service", NODES)
def test_each_node_has_its_own_postgres(service: str) -> None:
    url = make_url(node_settings(service).database_url)
    assert url.host == f"pg-{service}"
    pg_env = environment(url.host)
    assert url.username == pg_env["POSTGRES_USER"]
    assert url.database == pg_env["POSTGRES_DB"]
    assert url.port in (None, 5432)
    assert url.password is None, "the password comes from the pg_password secret (PGPASSWORD)"
    assert container_env(service)["PGPASSWORD"] == postgres_password(url.host)
    assert depends_on(service).get(url.host) == "service_healthy"


def test_no_two_services_share_a_database_server() -> None:
    hosts = [database_host(node_settings(n).database_url) for n in NODES]
    for service in BANKS:
        cmd = command(service)
        hosts.append(database_host(cmd[cmd.index("--database-url") + 1]))
    assert len(hosts) == len(set(hosts)), "two services share one PostgreSQL"
    assert sorted(hosts) == sorted(postgres_services())
    volumes = [v for p in postgres_services() for v in SERVICES[p]["volumes"]]
    assert len({str(v).split(":")[0] for v in volumes}) == len(postgres_services())


# ---- demo banks: their command line ---------------------------------------------------------


@pytest.mark.parametrize("service", BANKS)
def test_bank_command_is_accepted_by_the_bank(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = run_bank_main(service, monkeypatch)
    assert run.name == service
    assert run.host == "0.0.0.0"
    assert run.public_url == f"http://{service}:{run.port}"
    nodes = {n: node_settings(n) for n in NODES}
    assert run.coordinator_url.split(",") == [nodes[n].advertise_url for n in NODES]
    # the bank signs with its own secret, which every node's registry holds for its name,
    # at the URL it announces
    for s in nodes.values():
        registry = participants.load(s.participants_file, private=s.participants_file_private)
        assert registry[service].secrets == (run.kwargs["participant_token"],)
        assert registry[service].url_allowed(run.public_url + "/txc")
    assert not run.kwargs.get("token"), "a registry participant needs no bearer token"
    # its own database, which allows PREPARE TRANSACTION
    db = make_url(run.database_url)
    assert db.drivername == "postgresql+psycopg"  # bank.py hands it to create_engine as is
    assert db.host == f"pg-{service}"
    assert db.username == environment(db.host)["POSTGRES_USER"]
    assert db.database == environment(db.host)["POSTGRES_DB"]
    assert db.password is None
    assert container_env(service)["PGPASSWORD"] == postgres_password(db.host)
    assert depends_on(service).get(db.host) == "service_healthy"
    # reachable where it says it listens
    assert run.port in [container for _, container in published(service)]
    check = healthcheck(service)
    assert check is not None and f"http://127.0.0.1:{run.port}/healthz" in " ".join(check)


@pytest.mark.parametrize("service", BANKS)
def test_bank_variables_are_ones_the_bank_reads(service: str) -> None:
    source = Path(bank.__file__).read_text()
    for key, value in container_env(service).items():
        if key.startswith("TXC_"):
            assert f'os.environ.get("{key}")' in source, f"{service}: bank.py never reads {key}"
        else:
            assert key == "PGPASSWORD", f"{service}: unexpected variable {key}={value}"


@pytest.mark.parametrize("service", BANKS)
def test_bank_database_is_migrated_first(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    run = run_bank_main(service, monkeypatch)
    jobs = [d for d, c in depends_on(service).items() if c == "service_completed_successfully"]
    assert len(jobs) == 1, f"{service}: expected one migration job to wait for"
    args = build_parser().parse_args(command(jobs[0]))
    assert args.command == "migrate"
    assert args.branch == "participant"
    assert args.database_url == run.database_url
    assert "PGPASSWORD" in container_env(jobs[0])
    assert depends_on(jobs[0]).get(database_host(run.database_url)) == "service_healthy"


def test_demo_transfer_command_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    assert SERVICES[TRANSFER].get("entrypoint") == TRANSFER_ENTRYPOINT
    assert SERVICES[TRANSFER].get("profiles") == ["demo"], "on demand, not on `up`"
    use_container_env(TRANSFER, monkeypatch)
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def fake_transfer(*args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append((args, kwargs))
        return {"outcome": "commit"}

    monkeypatch.setattr(transfer, "transfer", fake_transfer)
    try:
        assert transfer.main(command(TRANSFER)) == 0
    except SystemExit as e:
        raise AssertionError(f"txc_demo.transfer rejects {command(TRANSFER)}") from e
    ((coordinator_url, from_bank, _, to_bank, _, amount), kwargs) = calls[0]
    nodes = {n: node_settings(n) for n in NODES}
    # one URL: transfer() hands it to TxcClient as a single base URL (unlike the banks,
    # which split a comma-separated list)
    assert coordinator_url in [nodes[n].advertise_url for n in NODES]
    cmd_a, cmd_b = command("bank-a"), command("bank-b")
    assert from_bank == cmd_a[cmd_a.index("--public-url") + 1]
    assert to_bank == cmd_b[cmd_b.index("--public-url") + 1]
    assert amount > 0
    for s in nodes.values():
        assert parse_tokens(s.api_tokens, s.api_token).get(kwargs["token"]) == Role.CLIENT
    assert set(depends_on(TRANSFER)) == set(BANKS)


@pytest.mark.parametrize("service", [f"pg-{b}" for b in BANKS])
def test_participant_postgres_allows_prepared_transactions(service: str) -> None:
    cmd = command(service)
    assert cmd[0] == "postgres"
    values = [
        cmd[i + 1].split("=", 1)[1]
        for i, arg in enumerate(cmd[:-1])
        if arg == "-c" and cmd[i + 1].startswith("max_prepared_transactions=")
    ]
    assert values and int(values[-1]) > 0


# ---- every txc command line is a real `txc` command ---------------------------------------


@pytest.mark.parametrize("service", [s for s in SERVICES if "build" in SERVICES[s]])
def test_txc_service_commands_parse(service: str) -> None:
    if SERVICES[service].get("entrypoint") in (BANK_ENTRYPOINT, TRANSFER_ENTRYPOINT):
        return  # their own parsers: test_bank_command_..., test_demo_transfer_...
    assert "entrypoint" not in SERVICES[service], f"{service}: unexpected entrypoint"
    args = build_parser().parse_args(command(service))
    assert args.command in ("serve", "migrate")


def test_nodes_migrate_their_own_database_on_start() -> None:
    """The compose file has no migration job for the nodes: `txc serve` applies the
    coordinator migrations itself before serving."""
    assert inspect.signature(build_app).parameters["run_migrations"].default is True
    source = inspect.getsource(sys.modules["coordinator.cli"].cmd_serve)
    assert "build_app(settings)" in source


# ---- dependencies, health checks, restart policies, ports, volumes ------------------------


def test_every_dependency_is_waited_for_properly() -> None:
    for service in SERVICES:
        for dep, condition in depends_on(service).items():
            assert dep in SERVICES, f"{service} depends on unknown {dep}"
            if condition == "service_healthy":
                assert healthcheck(dep) is not None, f"{service} waits for {dep}'s health check"
            elif condition == "service_completed_successfully":
                assert SERVICES[dep].get("restart") == "no", f"{dep} must be a one-shot job"
            else:
                pytest.fail(f"{service} -> {dep}: say service_healthy or _completed_successfully")


def test_health_checks() -> None:
    for service, spec in SERVICES.items():
        restart = spec.get("restart")
        assert restart is not None, f"{service} has no restart policy"
        if restart == "no":
            continue
        assert restart in LONG_RUNNING_RESTART, f"{service}: restart {restart!r}"
        check = healthcheck(service)
        assert check is not None, f"{service} has no health check"
        assert check[0] in ("CMD", "CMD-SHELL")
        if service in postgres_services():
            # -h: over TCP, which the image opens only once initdb has finished
            assert "pg_isready" in check and "-h" in check
        else:
            assert check[1] == "python", "slim images have no curl"
    for service in NODES:
        port = node_settings(service).port
        check = healthcheck(service)
        assert check is not None and f"http://127.0.0.1:{port}/healthz" in " ".join(check)


def test_published_ports() -> None:
    host_ports = [h for s in SERVICES for h, _ in published(s)]
    assert len(host_ports) == len(set(host_ports)), "a host port is published twice"
    for index, service in enumerate(NODES):
        port = node_settings(service).port
        assert published(service) == [(7000 + index, port)]
    for service in postgres_services():
        assert not published(service), f"{service}: databases stay inside the network"


def test_postgres_images_and_volumes() -> None:
    declared = set(COMPOSE.get("volumes") or {})
    for service in postgres_services():
        image = SERVICES[service]["image"]
        assert re.fullmatch(r"postgres:1[67](\.\d+)?", image), image
        (volume,) = SERVICES[service]["volumes"]
        name, _, target = str(volume).partition(":")
        assert name in declared, f"{service}: {name} is not a named volume"
        assert target == "/var/lib/postgresql/data"
        assert "POSTGRES_PASSWORD_FILE" in environment(service)


# ---- secrets --------------------------------------------------------------------------------


def test_every_secret_is_declared_used_and_mounted() -> None:
    used: set[str] = set()
    for service in SERVICES:
        mounted = mounted_secrets(service)
        assert mounted <= set(DECLARED_SECRETS), f"{service} mounts an undeclared secret"
        used |= mounted
        for key, value in environment(service).items():
            if key.endswith("_FILE"):
                assert value.startswith(SECRETS_MOUNT), f"{service}: {key}={value}"
                assert secret_of(service, value) in mounted
    assert used == set(DECLARED_SECRETS), "a declared secret is never used"
    for name, spec in DECLARED_SECRETS.items():
        assert spec["file"] == f"./deploy/secrets/{name}"


def test_no_secret_is_written_in_the_compose_file() -> None:
    for service in SERVICES:
        for key in environment(service):
            if any(word in key for word in SECRET_WORDS):
                assert key.endswith("_FILE"), f"{service}: {key} must come from a secret file"
    for service in txc_services():
        for arg in SERVICES[service].get("command") or []:
            assert not str(arg).startswith(("--token", "--participant-token")), service


def test_secrets_stay_out_of_git_and_of_the_image() -> None:
    ignore = (ROOT / "deploy" / "secrets" / ".gitignore").read_text().split()
    assert "*" in ignore and "!.gitignore" in ignore
    assert "deploy/secrets" in DOCKERIGNORE.read_text().split()


def test_make_secrets_generates_each_declared_secret(tmp_path: Path) -> None:
    folder = make_secrets(tmp_path)
    made = {p.name: p for p in folder.iterdir() if p.name != ".gitignore"}
    declared = {Path(spec["file"]).name for spec in DECLARED_SECRETS.values()}
    # and the role tokens, for applications, the dashboard's view and bearer participants
    assert set(made) == declared | {"client_token", "read_token", "participant_api_token"}
    values = {n: p.read_text() for n, p in made.items()}
    singles = {n: v for n, v in values.items() if n not in ("api_tokens", "participants")}
    assert len(set(singles.values())) == len(singles)
    assert all(re.fullmatch(r"[0-9a-f]{64}", v) for v in singles.values())
    assert parse_tokens(values["api_tokens"]) == {
        values["client_token"]: Role.CLIENT,
        values["participant_api_token"]: Role.PARTICIPANT,
        values["read_token"]: Role.READ,
    }
    # readable by the containers' non-root user; the directory keeps other host users out
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in made.values())
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    make_secrets(tmp_path)
    assert {n: p.read_text() for n, p in made.items()} == values, "it keeps existing ones"


# ---- the image ------------------------------------------------------------------------------


def test_dockerfile_entrypoint_runs_a_real_txc_command() -> None:
    (entrypoint,) = (exec_form(v) for v in dockerfile_values("ENTRYPOINT"))
    (cmd,) = (exec_form(v) for v in dockerfile_values("CMD"))
    assert entrypoint[:2] == ["txc-entrypoint", "txc"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "txc" in scripts
    args = build_parser().parse_args(entrypoint[2:] + cmd)
    assert args.command == "serve"
    copies = [v.split() for v in dockerfile_values("COPY")]
    assert any(
        c[-2] == "deploy/txc-entrypoint.py" and c[-1] == "/usr/local/bin/txc-entrypoint"
        for c in copies
    )


def test_dockerfile_image_user_port_and_health_check() -> None:
    bases = [v.split()[0] for v in dockerfile_values("FROM")]
    args = dict(v.split("=", 1) for v in dockerfile_values("ARG") if "=" in v)
    images = [args.get(b.strip("${}"), b) for b in bases]
    for image in images:
        m = re.fullmatch(r"python:3\.(\d+)-slim(-\w+)?", image)
        assert m and int(m.group(1)) >= 11, image
    stage = final_stage()
    users = [a for inst, a in stage if inst == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    exposed = [int(p.split("/")[0]) for inst, a in stage if inst == "EXPOSE" for p in a.split()]
    assert Settings().port in exposed
    (check,) = [a for inst, a in stage if inst == "HEALTHCHECK"]
    assert "python" in check and "/healthz" in check and "TXC_PORT" in check
    assert "curl" not in check


def test_the_installed_package_has_every_data_file() -> None:
    """The image installs the built wheel (`pip install .`), not the source tree: a file the
    code reads at run time (migrations, the dashboard's static files) is in it only when
    `[tool.setuptools.package-data]` names it."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_data: dict[str, list[str]] = tool.get("package-data", {})
    missing = []
    for top in ("coordinator", "participant_sdk", "txc_demo", "migrations"):
        for path in sorted((ROOT / top).rglob("*")):
            if path.is_dir() or "__pycache__" in path.parts:
                continue
            if path.suffix in (".py", ".pyc", ".md"):  # code, or documentation for readers
                continue
            covered = False
            for package_dir in path.relative_to(ROOT).parents:
                if not (ROOT / package_dir / "__init__.py").exists():
                    continue
                package = ".".join(package_dir.parts)
                relative = path.relative_to(ROOT / package_dir).as_posix()
                patterns = package_data.get(package, []) + package_data.get("*", [])
                covered = covered or any(fnmatch(relative, p) for p in patterns)
            if not covered:
                missing.append(path.relative_to(ROOT).as_posix())
    assert not missing, f"not in the wheel (add to package-data in pyproject.toml): {missing}"


def test_dockerignore_keeps_the_context_clean() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for needed in (".git", ".venv", ".txc", "deploy/secrets", ".pytest_cache"):
        assert needed in patterns, f".dockerignore should exclude {needed}"
    for inst, args in parse_dockerfile():
        if inst != "COPY" or "--from=" in args:
            continue
        sources = [a for a in args.split()[:-1] if not a.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
            assert not any(fnmatch(source, p) for p in patterns), f"{source} is ignored"


# ---- the entrypoint: Docker secrets from files --------------------------------------------


def test_entrypoint_reads_file_variables(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cr3t\n")
    env = ENTRYPOINT.resolve(
        {
            "TXC_API_TOKEN_FILE": str(secret),
            "PGPASSWORD_FILE": str(secret),
            "OTHER_FILE": "/not/read",
            "TXC_PORT": "7000",
        }
    )
    assert env == {
        "TXC_API_TOKEN": "s3cr3t",
        "PGPASSWORD": "s3cr3t",
        "OTHER_FILE": "/not/read",
        "TXC_PORT": "7000",
    }
    secret.write_text("  with spaces \n\n")
    assert ENTRYPOINT.resolve({"TXC_X_FILE": str(secret)}) == {"TXC_X": "  with spaces \n"}


def test_entrypoint_leaves_settings_named_file_alone() -> None:
    """`tls_ca_file` is a setting (a path the node opens), not a secret given by file."""
    file_settings = [f.name for f in dataclasses.fields(Settings) if f.name.endswith("_file")]
    assert file_settings, "no setting ends in _file any more: drop this test"
    env = {f"TXC_{name.upper()}": "/etc/ssl/ca.pem" for name in file_settings}
    assert ENTRYPOINT.resolve(env, read=lambda path: pytest.fail(f"read {path}")) == env
    # and through the script's own default, the coordinator's settings
    assert set(env) <= ENTRYPOINT.setting_variables()


@pytest.mark.parametrize(
    "env,message",
    [
        ({"TXC_API_TOKEN": "a", "TXC_API_TOKEN_FILE": "{f}"}, "both TXC_API_TOKEN"),
        ({"TXC_API_TOKEN_FILE": "{missing}"}, "cannot read"),
        ({"TXC_API_TOKEN_FILE": "{empty}"}, "is empty"),
    ],
)
def test_entrypoint_refuses_ambiguous_or_unreadable(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    (tmp_path / "f").write_text("x")
    (tmp_path / "empty").write_text("\n")
    paths = {"f": tmp_path / "f", "missing": tmp_path / "missing", "empty": tmp_path / "empty"}
    env = {k: v.format(**paths) for k, v in env.items()}
    with pytest.raises(ENTRYPOINT.EntrypointError, match=message):
        ENTRYPOINT.resolve(env)


def test_entrypoint_execs_the_command_with_the_secrets(tmp_path: Path) -> None:
    secret = tmp_path / "cluster_secret"
    secret.write_text("abc\n")
    env = {**os.environ, "TXC_CLUSTER_SECRET_FILE": str(secret)}
    env.pop("TXC_CLUSTER_SECRET", None)
    probe = (
        "import os; "
        "print(os.environ['TXC_CLUSTER_SECRET'], 'TXC_CLUSTER_SECRET_FILE' in os.environ)"
    )
    out = subprocess.run(
        [sys.executable, str(ENTRYPOINT_SCRIPT), sys.executable, "-c", probe],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["abc", "False"]
    env["TXC_CLUSTER_SECRET_FILE"] = str(tmp_path / "missing")
    failed = subprocess.run(
        [sys.executable, str(ENTRYPOINT_SCRIPT), sys.executable, "-c", "pass"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert failed.returncode == 2 and "cannot read" in failed.stderr


# ---- optional: Compose's own validation, where a Compose binary exists ---------------------


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    return [standalone] if standalone else None


def test_compose_validates_the_file() -> None:
    compose = _compose_command()
    if compose is None:
        pytest.skip("no `docker compose` or `docker-compose` on PATH to validate the file with")
    result = subprocess.run(
        [*compose, "-f", str(COMPOSE_FILE), "config", "--quiet"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
