"""What a session is: the set-up's round configuration and the caps on its life.

A session's configuration is a one-shot ``RoundConfig`` whose ``task_hash`` is the digest of
the session's caps (``terms_digest``): no model is trained at set-up, and the caps are then
inside the configuration id, so inside the session id and every key derived from it. A
client refuses a session whose caps exceed its own deployment's (rule S12).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

from secagg.errors import ConfigurationError
from secagg.hazmat.kdf import encode_fields
from secagg.protocol.codec import DIGEST_BYTES
from secagg.schemes.masking.messages import RoundConfig

__all__ = ["DEFAULT_MAX_ROUNDS", "DEFAULT_MAX_SECONDS", "SessionTerms", "terms_digest"]

DEFAULT_MAX_ROUNDS = 100
DEFAULT_MAX_SECONDS = 7 * 24 * 3600
# A u32 on the wire; far beyond any sane session, so only a typo reaches it.
_MAX_CAP = 2**32 - 1


def terms_digest(
    max_rounds: int, max_seconds: int, min_live_neighbours: int, binding: bytes
) -> bytes:
    """What a session's ``RoundConfig`` carries in place of a task."""
    return hashlib.sha256(
        encode_fields(
            "secagg/v1/session-terms", max_rounds, max_seconds, min_live_neighbours, binding
        )
    ).digest()


@dataclass(frozen=True)
class SessionTerms:
    """A session: its set-up configuration, the most rounds and seconds it may last, and the
    fewest live neighbours a client masks with (``k_min``; below it the client leaves rather
    than send, rule S5). ``binding`` is what a transport binds into the session (Flower: the
    digest of its node table, which maps node ids to client ids); 32 zero bytes if nothing."""

    config: RoundConfig
    max_rounds: int
    max_seconds: int
    min_live_neighbours: int
    binding: bytes = bytes(DIGEST_BYTES)

    def __post_init__(self) -> None:
        for name in ("max_rounds", "max_seconds", "min_live_neighbours"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_CAP:
                raise ConfigurationError(f"session {name} must be an int in [1, {_MAX_CAP}]")
        if not isinstance(self.binding, bytes) or len(self.binding) != DIGEST_BYTES:
            raise ConfigurationError(f"a session's binding is {DIGEST_BYTES} bytes")
        config = self.config
        if config.task_hash != terms_digest(
            self.max_rounds, self.max_seconds, self.min_live_neighbours, self.binding
        ):
            raise ConfigurationError("the configuration does not carry these session terms")
        if self.min_live_neighbours < config.threshold:
            # Fewer live neighbours than t and a dropped neighbour's key cannot be rebuilt.
            raise ConfigurationError(
                f"k_min {self.min_live_neighbours} is below the threshold {config.threshold}"
            )
        if config.active and 2 * self.min_live_neighbours <= config.degree:
            # The certified survivor set keeps the honest members connected only if every
            # one masks with more than half its neighbourhood (docs/SESSIONS.md 2.4, A6).
            raise ConfigurationError(
                f"active mode needs k_min > k/2; got {self.min_live_neighbours} for k = "
                f"{config.degree}"
            )

    @property
    def config_id(self) -> bytes:
        return self.config.config_id

    @classmethod
    def carrying(
        cls,
        config: RoundConfig,
        *,
        max_rounds: int = DEFAULT_MAX_ROUNDS,
        max_seconds: int = DEFAULT_MAX_SECONDS,
        min_live_neighbours: int | None = None,
        binding: bytes = bytes(DIGEST_BYTES),
    ) -> SessionTerms:
        """The terms for ``config`` (its task hash replaced by the terms' digest); k_min
        defaults to the threshold (and to floor(k/2) + 1 in active mode, if larger)."""

        if min_live_neighbours is None:
            min_live_neighbours = config.threshold
            if config.active:
                min_live_neighbours = max(min_live_neighbours, config.degree // 2 + 1)
        digest = terms_digest(max_rounds, max_seconds, min_live_neighbours, binding)
        return cls(
            dataclasses.replace(config, task_hash=digest),
            max_rounds,
            max_seconds,
            min_live_neighbours,
            binding,
        )
