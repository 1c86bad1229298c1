"""A CKKS deployment of the service: its round settings, and the keys provisioned for it.

``secagg certs --scheme ckks`` plays the trusted dealer (docs/THREAT_MODEL.md): it generates
one CKKS secret key and writes

- ``ckks/server.context``: the coordinator's evaluation context, parameters only (no secret
  key, no public key: it can add ciphertexts, neither decrypt nor encrypt); public;
- ``clients/client-<id>.ckks`` beside each client's identity: the key holders' context, with
  the secret key, mode 0600.

Both are new files, never overwritten, and every one is checked before the first is written.
Each side validates what it loads against the deployment's CKKS parameters: the coordinator
refuses a context that holds the secret key (it must never be able to decrypt one update),
a client refuses one without it. A mistake is one ``ConfigurationError`` line naming the file.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from secagg.errors import ConfigurationError, DecodeError
from secagg.hazmat import ckks
from secagg.schemes.ckks import CkksScheme
from secagg.service.files import create_file, make_directory, read_file, refuse_existing

__all__ = [
    "CLIENT_CONTEXT_SUFFIX",
    "SERVER_CONTEXT_FILE",
    "CkksSettings",
    "client_context_path",
    "load_client_context",
    "load_server_context",
    "provision_ckks_keys",
    "require_tenseal",
]

SERVER_CONTEXT_FILE = "ckks/server.context"
CLIENT_CONTEXT_SUFFIX = ".ckks"
# A context of the largest parameters (N = 32768, 881 bits of moduli) with its secret key is a
# few MiB; anything far larger is not a context of ours.
_MAX_CONTEXT_BYTES = 64 << 20


@dataclass(frozen=True)
class CkksSettings:
    """The round parameters of a CKKS deployment: what ``[round]`` and ``[ckks]`` fix.

    ``dim``, ``max_clients``, ``clip``, ``max_weight`` and ``min_cohort`` mean what they mean
    for masking (``secagg.schemes.masking.parameters.Params``); ``params`` are the CKKS
    parameters (NVFlare's by default) and ``key_holders`` how many clients of each cohort are
    asked to decrypt the sum (any one suffices). Refused on construction (``ConfigurationError``
    naming the knob): a cohort of ``max_clients`` whose weighted sum would overflow the
    parameters' headroom or whose total weight would not decrypt exactly.
    """

    dim: int
    max_clients: int
    clip: float = 1.0
    max_weight: int = 1
    min_cohort: int = 1
    params: ckks.CkksParameters = field(default_factory=ckks.CkksParameters)
    key_holders: int = 2
    error_bound: float = field(init=False)

    def __post_init__(self) -> None:
        if not _is_int(self.dim) or not 1 <= self.dim < 2**32 - 1:
            raise ConfigurationError("dim must be a positive integer")
        if not _is_int(self.max_clients) or not 3 <= self.max_clients < 2**32:
            raise ConfigurationError("max_clients must be an integer in [3, 2**32)")
        if not _is_int(self.max_weight) or not 1 <= self.max_weight < 2**31:
            raise ConfigurationError("max_weight must be an integer in [1, 2**31)")
        if (
            isinstance(self.clip, bool)
            or not isinstance(self.clip, int | float)
            or not math.isfinite(self.clip)
            or self.clip <= 0
        ):
            raise ConfigurationError(f"clip must be finite and positive, got {self.clip!r}")
        if not _is_int(self.min_cohort) or not 1 <= self.min_cohort <= self.max_clients:
            raise ConfigurationError(
                f"min_cohort must be an integer in [1, max_clients = {self.max_clients}]"
            )
        if not _is_int(self.key_holders) or not 1 <= self.key_holders <= self.max_clients:
            raise ConfigurationError(
                f"key_holders must be an integer in [1, max_clients = {self.max_clients}]"
            )
        if not isinstance(self.params, ckks.CkksParameters):
            raise ConfigurationError("params must be CkksParameters")
        # The largest cohort must fit the parameters (this raises, naming what to lower).
        bound = ckks.error_bound(self.params, self.max_clients, float(self.clip), self.max_weight)
        object.__setattr__(self, "error_bound", bound)

    def scheme(
        self,
        *,
        client_context: ckks.ClientContext | None = None,
        server_context: ckks.ServerContext | None = None,
        allowed: frozenset[int] | None = None,
    ) -> CkksScheme:
        """The deployment's scheme, holding the context of the side that runs it."""
        return CkksScheme(
            dim=self.dim,
            max_weight=self.max_weight,
            clip=float(self.clip),
            min_cohort=self.min_cohort,
            params=self.params,
            client_context=client_context,
            server_context=server_context,
            allowed=allowed,
            key_holders=self.key_holders,
        )


def require_tenseal() -> None:
    """Refuse a CKKS deployment where TenSEAL is missing, before anything is written."""
    if importlib.util.find_spec("tenseal") is None:
        raise ConfigurationError(
            "a CKKS deployment needs the optional tenseal package: pip install 'secagg[he]'"
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def client_context_path(identity: Path) -> Path:
    """Where a client's CKKS context sits: beside its identity, ``client-3.key`` ->
    ``client-3.ckks``."""
    identity = Path(identity)
    return identity.with_name(identity.stem + CLIENT_CONTEXT_SUFFIX)


def provision_ckks_keys(
    directory: Path, identities: Mapping[int, Path], params: ckks.CkksParameters
) -> tuple[Path, dict[int, Path]]:
    """Generate one CKKS secret key and write the coordinator's and every client's context.

    Returns the server context's path and each client's. Refuses (``ConfigurationError``)
    before writing anything if any of the files exists.
    """
    server = Path(directory) / SERVER_CONTEXT_FILE
    clients = {c: client_context_path(path) for c, path in identities.items()}
    for path in (server, *clients.values()):
        refuse_existing(path)
    keys = ckks.CkksKeys.generate(params)
    make_directory(server.parent)
    create_file(server, keys.server_context, private=False)
    for path in clients.values():
        make_directory(path.parent)
        create_file(path, keys.client_context, private=True)
    return server, clients


def load_server_context(path: Path, params: ckks.CkksParameters) -> ckks.ServerContext:
    """The coordinator's evaluation context; refused if it holds the secret key or is for
    other parameters than the deployment's."""
    data = read_file(Path(path), "the CKKS server context", limit=_MAX_CONTEXT_BYTES)
    try:
        return ckks.load_server_context(data, expected=params)
    except DecodeError as exc:
        raise ConfigurationError(
            f"{path} is not this deployment's CKKS server context: {exc} (the coordinator "
            f"takes the {SERVER_CONTEXT_FILE} that `secagg certs --scheme ckks` wrote)"
        ) from None


def load_client_context(path: Path, params: ckks.CkksParameters) -> ckks.ClientContext:
    """A key holder's context (with the secret key) for the deployment's parameters."""
    data = read_file(Path(path), "the CKKS client context", limit=_MAX_CONTEXT_BYTES)
    try:
        return ckks.load_client_context(data, expected=params)
    except DecodeError as exc:
        raise ConfigurationError(
            f"{path} is not this deployment's CKKS client context: {exc} (each client takes "
            f"the <identity>{CLIENT_CONTEXT_SUFFIX} that `secagg certs --scheme ckks` wrote "
            "beside its identity)"
        ) from None
