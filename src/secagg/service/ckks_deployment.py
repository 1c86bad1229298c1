"""The keys a CKKS deployment of the service provisions (its settings: ``secagg.schemes.ckks``).

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
from collections.abc import Mapping
from pathlib import Path

from secagg.errors import ConfigurationError, DecodeError
from secagg.hazmat import ckks
from secagg.service.files import create_file, make_directory, read_file, refuse_existing

__all__ = [
    "CLIENT_CONTEXT_SUFFIX",
    "SERVER_CONTEXT_FILE",
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


def require_tenseal() -> None:
    """Refuse a CKKS deployment where TenSEAL is missing, before anything is written."""
    if importlib.util.find_spec("tenseal") is None:
        raise ConfigurationError(
            "a CKKS deployment needs the optional tenseal package: pip install 'secagg[he]'"
        )


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
