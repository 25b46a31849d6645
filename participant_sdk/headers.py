"""Propagation headers, identifier validation and the PostgreSQL global transaction id.

Why validation lives here: the participant name and the txid end up inside
`PREPARE TRANSACTION '<gid>'` (a utility statement that takes no bind parameters) and inside
SQL literals of `COMMIT PREPARED`, so both are restricted to a small safe alphabet and to
lengths that keep the gid under PostgreSQL's 200-byte limit (GIDSIZE).
"""

from __future__ import annotations

import re

TRANSACTION_HEADER = "Txc-Transaction"
COORDINATOR_HEADER = "Txc-Coordinator"
LEADER_HEADER = "Txc-Leader"
# Deferred enlistment: a client that will bring the enlistments to its commit asks for them
# with `Txc-Enlist: deferred`; a participant then answers with `Txc-Enlistment` (one JSON
# object: name, url, vote, sig) instead of enlisting itself.
ENLIST_HEADER = "Txc-Enlist"
ENLIST_DEFERRED = "deferred"
ENLISTMENT_HEADER = "Txc-Enlistment"

GID_PREFIX = "txc"
PG_GID_MAX_BYTES = 199  # PostgreSQL's GIDSIZE is 200 bytes including the terminating NUL
MAX_PARTICIPANT_NAME = 64
MAX_TXID = 128
# gid = "txc:" + name + ":" + txid must fit PostgreSQL's limit for every allowed name/txid.
assert len(GID_PREFIX) + 1 + MAX_PARTICIPANT_NAME + 1 + MAX_TXID <= PG_GID_MAX_BYTES

_NAME_RE = re.compile(rf"^[A-Za-z0-9_.\-]{{1,{MAX_PARTICIPANT_NAME}}}")
# A txid may also hold ':' (the gid is split on the first two colons, and names have none).
_TXID_RE = re.compile(rf"^[A-Za-z0-9_.:\-]{{1,{MAX_TXID}}}")
_URL_RE = re.compile(r"^https?://[^\s/]+(/\S*)?")


def validate_participant_name(name: str) -> str:
    """Return `name` if it may be a participant name, else raise ValueError."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"participant name must be 1-{MAX_PARTICIPANT_NAME} characters of "
            f"[A-Za-z0-9_.-], got {name!r}"
        )
    return name


def is_valid_txid(txid: object) -> bool:
    return isinstance(txid, str) and bool(_TXID_RE.fullmatch(txid))


def validate_txid(txid: str) -> str:
    """Return `txid` if it is a well-formed transaction id, else raise ValueError."""
    if not is_valid_txid(txid):
        raise ValueError(
            f"transaction id must be 1-{MAX_TXID} characters of [A-Za-z0-9_.:-], got {txid!r}"
        )
    return txid


def validate_base_url(url: str) -> str:
    """An http(s) base URL without a trailing slash."""
    if not isinstance(url, str) or not _URL_RE.fullmatch(url):
        raise ValueError(f"expected an http(s) URL, got {url!r}")
    return url.rstrip("/")


def make_gid(participant: str, txid: str) -> str:
    """The PostgreSQL global transaction id of `participant`'s share of `txid`."""
    return f"{GID_PREFIX}:{validate_participant_name(participant)}:{validate_txid(txid)}"


def gid_prefix(participant: str) -> str:
    """Every gid owned by `participant` starts with this (used by recovery)."""
    return f"{GID_PREFIX}:{validate_participant_name(participant)}:"


def parse_gid(gid: str) -> tuple[str, str] | None:
    """(participant, txid) of a txc gid, or None for a gid that is not ours."""
    parts = gid.split(":", 2)
    if len(parts) != 3 or parts[0] != GID_PREFIX:
        return None
    name, txid = parts[1], parts[2]
    if not _NAME_RE.fullmatch(name) or not is_valid_txid(txid):
        return None
    return name, txid


def propagation_headers(
    txid: str, coordinator_url: str | None = None, deferred: bool = False
) -> dict[str, str]:
    """Headers a client passes on every call to a participant inside the transaction
    (`deferred`: a lazy transaction's, asking for the participants' enlistments)."""
    headers = {TRANSACTION_HEADER: validate_txid(txid)}
    if coordinator_url:
        headers[COORDINATOR_HEADER] = coordinator_url
    if deferred:
        headers[ENLIST_HEADER] = ENLIST_DEFERRED
    return headers
