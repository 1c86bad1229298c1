"""The round ledger: every round the coordinator ran, durably, in one SQLite file.

For each round the ledger keeps its public configuration (session id, task hash, protocol,
cohort, degree, threshold, dimension), its kind (one-shot, or its number in a session that
spans rounds: ``LedgerRound.kind``, ``session_round``), when it started and ended, how long
each stage took, which clients were dropped at which stage and why, its outcome, and, for a
completed round only, the final aggregate and the total weight behind it and, under
distributed differential privacy, the guarantee of the sum it revealed and the epsilon spent so far
(``secagg.dp.round_privacy.RoundPrivacy``, computed by ``account_round``).

The coordinator opens the writer, ``Ledger(path)``, which locks the file for as long as it is
open; ``secagg rounds`` and other readers open ``Ledger.open_readonly(path)``, which never
creates, changes, locks or recovers anything. Every failure an operator can cause (a second
coordinator, a file that is missing, empty, foreign, unreadable or read-only, a full disk) is
a ``LedgerError`` with one line naming the file; ``UsageError`` remains what it always is:
our own code calling the ledger wrongly.

No secret (key, seed, share) and no individual update, masked or not, is ever stored: no
method takes one. The only vector in the file is the aggregate of a completed round, which
the protocol reveals anyway; the only other blobs are the two public 32-byte hashes and, under
distributed DP, a round's 32-byte DP series (the digest of the public DP configuration).

Modules, in dependency order: ``schema`` (the tables of each schema version, recognising and
upgrading them), ``files`` (what is at the path, the writer's lock, creating a ledger whole,
opening it for the writer or a reader), ``rows`` (the record types and decoding stored rows)
and ``store`` (``Ledger``: writing and reading rounds).
"""

from secagg.ledger.files import LOCK_SUFFIX
from secagg.ledger.rows import DropRecord, LedgerRound, RoundKind, describe_drops
from secagg.ledger.schema import SCHEMA_VERSION
from secagg.ledger.store import RECOVERED_REASON, Ledger, account_round

__all__ = [
    "LOCK_SUFFIX",
    "RECOVERED_REASON",
    "SCHEMA_VERSION",
    "DropRecord",
    "Ledger",
    "LedgerRound",
    "RoundKind",
    "account_round",
    "describe_drops",
]
