"""Every error secagg raises, in one tree.

::

    SecAggError
    ├── ConfigurationError      parameters that are invalid or could overflow (also ValueError)
    ├── UsageError              we misbehaved: an API called in the wrong state or with bad types
    ├── DecodeError             bytes that are not a valid encoding: junk, truncation, trailing
    │                           bytes, out-of-range values (also ValueError)
    ├── InputError              an update handed to a client is unusable: wrong length, NaN or
    │                           infinity, a weight that is not an int in range (also ValueError)
    ├── CryptoError
    │   ├── AuthenticationError     an AEAD ciphertext or a signature did not verify
    │   └── InconsistentSharesError Shamir shares that do not lie on one polynomial, or whose
    │                               secret does not match its public commitment
    ├── ServiceError            the network service cannot go on (one line for the operator)
    │   ├── Rejected                the coordinator refused this client (not on its allow-list,
    │   │                           or told to stop)
    │   └── Unreachable             no connection: a certificate that does not verify, or every
    │                               attempt failed
    ├── LedgerError             the round ledger cannot be opened, locked or written (a second
    │                           coordinator, a foreign or empty file, a full disk)
    ├── JournalError            a client's journal cannot be opened, locked or written (a
    │                           foreign file, a newer schema, a full disk): the client answers
    │                           nothing it could not record
    ├── MissingExtra            an optional extra that this use needs is not installed (also
    │                           ImportError); carries the extra's name (``secagg.extras``)
    ├── ClientAbort             the peer (server) misbehaved: the client stops and reveals nothing
    │                           more; carries an ``AbortReason``
    └── RoundAborted            the server cannot finish the round (fewer than t clients remain,
                                or reconstruction failed); no aggregate is revealed; carries a
                                human-readable reason

A misbehaving *client* is never an exception on the server: the server records a
``DropReason`` for it and the round goes on (see ``secagg.schemes.masking.server``).

Messages never contain secret material: keys, seeds, shares and vectors stay out of every
``str()`` and ``repr()`` of these exceptions.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "AbortReason",
    "AuthenticationError",
    "ClientAbort",
    "ConfigurationError",
    "CryptoError",
    "DecodeError",
    "DropReason",
    "InconsistentSharesError",
    "InputError",
    "JournalError",
    "LedgerError",
    "MissingExtra",
    "Rejected",
    "RoundAborted",
    "SecAggError",
    "ServiceError",
    "Unreachable",
    "UsageError",
    "one_line",
]


def one_line(text: str, limit: int | None = None) -> str:
    """What a peer (or an exception) said, as one printable line: newlines and control
    characters become spaces, runs of space one, and at most ``limit`` characters. The one
    sanitiser every log line, refusal detail and error line uses (a peer's words are never
    markup, never two lines)."""
    line = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    return line if limit is None else line[:limit]


class SecAggError(Exception):
    """Base class of every error raised by secagg."""


class ConfigurationError(SecAggError, ValueError):
    """Parameters are invalid, infeasible, or could overflow the ring."""


class UsageError(SecAggError):
    """The caller (our own code) used an API in the wrong state: a bug on our side."""


class DecodeError(SecAggError, ValueError):
    """Bytes are not a valid encoding of the expected object."""


class InputError(SecAggError, ValueError):
    """The update given to a client cannot be sent: wrong shape, not finite, bad weight."""


class CryptoError(SecAggError):
    """A cryptographic check failed."""


class AuthenticationError(CryptoError):
    """An AEAD ciphertext or a signature did not verify."""


class InconsistentSharesError(CryptoError):
    """Secret shares disagree with each other or with the secret's public commitment."""


class ServiceError(SecAggError):
    """The network service cannot go on; the message is one line for the operator."""


class Rejected(ServiceError):
    """The coordinator refused this client: retrying would not help."""


class Unreachable(ServiceError):
    """The coordinator could not be reached: its certificate does not verify (fatal at once),
    or every allowed attempt failed."""


class LedgerError(SecAggError):
    """The round ledger cannot be used: locked by another coordinator, not a ledger, read-only
    where a write is needed, or the disk under it is full. Nothing was half-written."""


class JournalError(SecAggError):
    """A client's journal cannot be used: not a journal, a schema this secagg does not read,
    locked for too long, or the disk under it is full. Nothing was answered that it does not
    hold."""


class MissingExtra(SecAggError, ImportError):
    """An optional extra of ``pyproject.toml`` is not installed, and ``purpose`` needs it.

    Raised only through ``secagg.extras`` (which knows each extra's modules); the command
    line turns it into its one line, naming the command: ``secagg demo needs the fl extra
    (for the digits data): pip install 'secagg[fl]'``. Also an ``ImportError``, so code that
    guards an optional import with ``except ImportError`` still sees it for what it is.
    """

    def __init__(self, extra: str, purpose: str, module: str | None = None) -> None:
        self.extra = extra
        self.purpose = purpose
        super().__init__(f"{purpose} needs {self.install}", name=module)

    @property
    def install(self) -> str:
        """``the fl extra: pip install 'secagg[fl]'``: what to do, in words."""
        return f"the {self.extra} extra: pip install 'secagg[{self.extra}]'"

    def for_command(self, command: str) -> str:
        """The operator's line: ``secagg demo needs the fl extra (for ...): pip install ...``."""
        return (
            f"{command} needs the {self.extra} extra (for {self.purpose}): "
            f"pip install 'secagg[{self.extra}]'"
        )

    def __reduce__(self) -> tuple[type[MissingExtra], tuple[str, str, str | None]]:
        # Rebuilt from its parts, not its message: it crosses process pools and Ray.
        return (type(self), (self.extra, self.purpose, self.name))


class AbortReason(StrEnum):
    """Why a client refused to go on: each is a claim of the server that did not check out."""

    WRONG_SESSION = "wrong-session"
    LISTED_AS_DROPPED = "listed-as-dropped"
    UNKNOWN_ID = "unknown-id"
    DUPLICATE_ID = "duplicate-id"
    RESURRECTED_ID = "resurrected-id"
    SELF_LISTED_AS_PEER = "self-listed-as-peer"
    DUPLICATE_KEY = "duplicate-key"
    BELOW_THRESHOLD = "below-threshold"
    BOTH_SHARES_REQUESTED = "both-shares-requested"
    INCOMPLETE_REQUEST = "incomplete-request"
    UNEXPECTED_MESSAGE = "unexpected-message"
    MALFORMED_MESSAGE = "malformed-message"
    INVALID_CONFIG = "invalid-config"
    # The client's own policy (its deployment) against what the server configured:
    DOWNGRADE = "downgrade"  # a weaker server model or minimum cohort than the deployment's
    PARAMETER_MISMATCH = "parameter-mismatch"  # protocol, dim, clip, bits, weight, ring width
    WEAK_GRAPH = "weak-graph"  # degree or threshold other than the client computes itself
    COHORT_NOT_ALLOWED = "cohort-not-allowed"  # an id that is not on the allow-list
    REPLAYED_ROUND = "replayed-round"  # a round id this client has already taken part in
    MODEL_MISMATCH = "model-mismatch"  # the model is not the one the session is bound to
    INVALID_MODEL = "invalid-model"  # wrong length, NaN or infinity in the model
    INVALID_UPDATE = "invalid-update"  # the update callback returned something unusable
    UPDATE_FAILED = "update-failed"  # the update callback raised
    STAGE_TIMEOUT = "stage-timeout"  # the server said nothing within the client's deadline
    # Session agreement (commit and reveal):
    BAD_CONTRIBUTIONS = "bad-contributions"  # not the committed set, or without our own
    TOO_MANY_ATTEMPTS = "too-many-attempts"  # more commit attempts than the protocol allows
    BAD_PEER_KEY = "bad-peer-key"
    BAD_SIGNATURE = "bad-signature"
    INCONSISTENT_SURVIVORS = "inconsistent-survivors"
    SURVIVORS_CUT = "survivors-cut"  # a survivor set that would split the graph's honest part
    COHORT_TOO_SMALL = "cohort-too-small"
    # What the client's journal holds it to (``secagg.client_session``):
    REPLAYED_TASK = "replayed-task"  # a task whose update already entered a sum
    BUDGET_EXHAUSTED = "budget-exhausted"  # the round would spend more than the DP budget
    CONFLICTING_REQUEST = "conflicting-request"  # not the request answered before at this step
    ROUND_CLOSED = "round-closed"  # a message of a round this client is no longer in
    # Sessions that span rounds (``secagg.schemes.masking.session``):
    ROUND_OUT_OF_ORDER = "round-out-of-order"  # a round number that is not the next one
    SESSION_EXPIRED = "session-expired"  # past the session's rounds or seconds
    TOO_FEW_LIVE_NEIGHBOURS = "too-few-live-neighbours"  # fewer than k_min left to mask with


class DropReason(StrEnum):
    """Why the server excluded a client from (the rest of) a round."""

    MISSED_UPLOAD = "missed-upload"  # plaintext and CKKS schemes
    MISSED_DECRYPT = "missed-decrypt"  # CKKS: the key holder asked to decrypt did not answer
    BAD_DECRYPTION = "bad-decryption"  # CKKS: a decrypted sum that does not fit the round
    MISSED_COMMIT = "missed-commit"
    MISSED_REVEAL = "missed-reveal"
    BAD_REVEAL = "bad-reveal"  # a contribution that does not match its commitment
    MISSED_ADVERTISE = "missed-advertise"
    MISSED_SHARE = "missed-share"
    MISSED_MASKED_INPUT = "missed-masked-input"
    MISSED_CONSISTENCY = "missed-consistency"
    MISSED_UNMASK = "missed-unmask"
    MALFORMED = "malformed"
    WRONG_LENGTH = "wrong-length"
    WRONG_STAGE = "wrong-stage"
    DUPLICATE = "duplicate"
    UNKNOWN_CLIENT = "unknown-client"
    DUPLICATE_KEY = "duplicate-key"
    BAD_CIPHERTEXT = "bad-ciphertext"
    BAD_SHARE = "bad-share"
    CLIENT_ABORTED = "client-aborted"
    WRONG_SESSION = "wrong-session"
    BAD_KEY = "bad-key"
    TOO_FEW_NEIGHBOURS = "too-few-neighbours"
    DISCONNECTED = "disconnected"
    BAD_SIGNATURE = "bad-signature"


class ClientAbort(SecAggError):
    """The client detected a server claim it must not act on, and stopped."""

    def __init__(self, reason: AbortReason, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)


class RoundAborted(SecAggError):
    """The server could not finish the round; nothing about the inputs was revealed."""

    def __init__(self, stage: str, detail: str) -> None:
        self.stage = stage
        self.detail = detail
        super().__init__(f"round aborted at {stage}: {detail}")
