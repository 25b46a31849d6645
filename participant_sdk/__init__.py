"""txc participant SDK: the coordinator client and the participant side (DESIGN §6).

Client side::

    client = TxcClient("http://127.0.0.1:7000")
    with client.transaction() as tx:
        httpx.post(bank_a + "/transfer/debit", json=..., headers=tx.headers).raise_for_status()
        httpx.post(bank_b + "/transfer/credit", json=..., headers=tx.headers).raise_for_status()

Participant side::

    rm = PgResourceManager("bank-a", engine, public_url=..., coordinator_url=...)
    rm.install(app)  # MariaDB/MySQL: MySqlResourceManager, the same contract (XA branches)

    @app.post("/transfer/debit")
    def debit(body: Debit, work: PgWork = rm.join()) -> dict:
        work.connection.execute(...)

    @app.post("/transfer/credit")  # async: the whole joined unit in one worker-thread call
    async def credit(body: Credit, join: AsyncJoin[PgWork] = rm.join_async()) -> dict:
        return await join.run(apply_credit, body)  # apply_credit(work, body): a plain def
"""

from participant_sdk.callbacks import CallbackParticipant, CallbackWork
from participant_sdk.client import (
    AsyncTransaction,
    AsyncTxcClient,
    ParticipantSigner,
    Transaction,
    TxcClient,
)
from participant_sdk.errors import (
    AuthenticationFailed,
    CoordinatorUnavailable,
    EnlistmentUncertain,
    InvalidRequest,
    MissingTransaction,
    ParticipantError,
    TransactionAborted,
    TransactionAlreadyCommitted,
    TransactionConflict,
    TransactionNotFound,
    TxcError,
    WorkRefused,
)
from participant_sdk.headers import (
    COORDINATOR_HEADER,
    ENLIST_HEADER,
    ENLISTMENT_HEADER,
    LEADER_HEADER,
    TRANSACTION_HEADER,
    make_gid,
    propagation_headers,
)
from participant_sdk.mysql_resource import MySqlResourceManager, MySqlWork
from participant_sdk.participant import (
    AsyncJoin,
    InsecureConfiguration,
    JoinFailed,
    ParticipantBase,
    ProtocolReply,
)
from participant_sdk.pg_resource import PgResourceManager, PgWork
from participant_sdk.record import create_tables
from participant_sdk.recovery import (
    RECOVERY_INTERVAL_S,
    RecoveryItem,
    RecoveryLoop,
    RecoveryReport,
    resolve_in_doubt,
)

__all__ = [
    "COORDINATOR_HEADER",
    "ENLISTMENT_HEADER",
    "ENLIST_HEADER",
    "LEADER_HEADER",
    "RECOVERY_INTERVAL_S",
    "TRANSACTION_HEADER",
    "AsyncJoin",
    "AsyncTransaction",
    "AsyncTxcClient",
    "AuthenticationFailed",
    "CallbackParticipant",
    "CallbackWork",
    "CoordinatorUnavailable",
    "EnlistmentUncertain",
    "InsecureConfiguration",
    "InvalidRequest",
    "JoinFailed",
    "MissingTransaction",
    "MySqlResourceManager",
    "MySqlWork",
    "ParticipantBase",
    "ParticipantError",
    "ParticipantSigner",
    "PgResourceManager",
    "PgWork",
    "ProtocolReply",
    "RecoveryItem",
    "RecoveryLoop",
    "RecoveryReport",
    "Transaction",
    "TransactionAborted",
    "TransactionAlreadyCommitted",
    "TransactionConflict",
    "TransactionNotFound",
    "TxcClient",
    "TxcError",
    "WorkRefused",
    "create_tables",
    "make_gid",
    "propagation_headers",
    "resolve_in_doubt",
]
