"""Move money from an account in one demo bank to an account in another, atomically.

    python -m txc_demo.transfer --coordinator-url http://127.0.0.1:7000 \
        --from-bank http://127.0.0.1:8001 --from-account alice \
        --to-bank http://127.0.0.1:8002 --to-account bob --amount 10

Begin a global transaction, call bank A's debit and bank B's credit with the transaction's
propagation headers, and commit; any failure on the way aborts (the client's context
manager), so either both banks change or neither does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import httpx

from participant_sdk import Transaction, TransactionAborted, TxcClient, TxcError

HTTP_TIMEOUT_S = 30.0  # a bank call may wait for a row lock (bank.WORK_LOCK_TIMEOUT_MS)
TRANSFER_TIMEOUT_S = 30.0  # the global transaction's timeout at the coordinator


class TransferFailed(Exception):
    """A bank refused its part (insufficient funds, unknown account, busy, ...)."""

    def __init__(self, bank_url: str, status: int, body: Any) -> None:
        super().__init__(f"{bank_url}: HTTP {status}: {body}")
        self.bank_url, self.status, self.body = bank_url, status, body


def _call(http: httpx.Client, url: str, payload: dict[str, Any], tx: Transaction) -> Any:
    resp = http.post(url, json=payload, headers=tx.headers)
    try:
        body = resp.json()
    except ValueError:
        body = resp.text
    if resp.status_code != 200:
        raise TransferFailed(url, resp.status_code, body)
    tx.collect(resp)  # a lazy transaction's deferred enlistment (nothing otherwise)
    return body


def transfer(
    coordinator_url: str,
    from_bank: str,
    from_account: str,
    to_bank: str,
    to_account: str,
    amount: int,
    *,
    token: str | None = None,
    client: TxcClient | None = None,
    lazy: bool = False,
) -> dict[str, Any]:
    """Returns {"txid", "outcome": "commit", "debit", "credit"}; raises TransferFailed (the
    transaction was aborted), TransactionAborted, or CoordinatorUnavailable (outcome unknown:
    ask the coordinator for it)."""
    own = client is None
    seeds = [u.strip() for u in coordinator_url.split(",") if u.strip()]  # one node or several
    coordinator = client or TxcClient(seeds, token=token)
    try:
        with httpx.Client(timeout=HTTP_TIMEOUT_S) as http:
            with coordinator.transaction(
                timeout_s=TRANSFER_TIMEOUT_S, labels={"kind": "transfer"}, lazy=lazy
            ) as tx:
                debit = _call(
                    http,
                    from_bank.rstrip("/") + "/transfer/debit",
                    {"account": from_account, "amount": amount},
                    tx,
                )
                credit = _call(
                    http,
                    to_bank.rstrip("/") + "/transfer/credit",
                    {"account": to_account, "amount": amount},
                    tx,
                )
            return {"txid": tx.txid, "outcome": tx.outcome, "debit": debit, "credit": credit}
    finally:
        if own:
            coordinator.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="atomic transfer between two demo banks")
    ap.add_argument(
        "--coordinator-url", required=True, help="a coordinator node, or several: URL1,URL2"
    )
    ap.add_argument("--from-bank", required=True, help="base URL of the debited bank")
    ap.add_argument("--from-account", required=True)
    ap.add_argument("--to-bank", required=True, help="base URL of the credited bank")
    ap.add_argument("--to-account", required=True)
    ap.add_argument("--amount", type=int, required=True)
    ap.add_argument(
        "--token",
        default=os.environ.get("TXC_CLIENT_TOKEN") or os.environ.get("TXC_API_TOKEN"),
        help="coordinator API token (default $TXC_CLIENT_TOKEN, else $TXC_API_TOKEN)",
    )
    ap.add_argument(
        "--lazy",
        action="store_true",
        help="a lazy transaction: no begin call, the banks' enlistments go with the commit",
    )
    args = ap.parse_args(argv)
    try:
        result = transfer(
            args.coordinator_url,
            args.from_bank,
            args.from_account,
            args.to_bank,
            args.to_account,
            args.amount,
            token=args.token,
            lazy=args.lazy,
        )
    except TransferFailed as e:
        print(json.dumps({"outcome": "abort", "error": str(e)}))
        return 1
    except TransactionAborted as e:
        print(json.dumps({"outcome": "abort", "error": str(e)}))
        return 1
    except TxcError as e:
        print(json.dumps({"outcome": "unknown", "error": str(e)}))
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
