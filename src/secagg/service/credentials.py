"""Credentials of a deployment, in one place: TLS, client identities and the allow-list.

This module writes a whole local deployment (:func:`create_deployment`) and re-exports what
the others need, so that a caller imports credentials from one module. Each concern lives in
a module of its own:

- ``secagg.service.tls``: the local CA, the server certificate, loading them with checks;
- ``secagg.service.identity``: client identities, challenges, the allow-list;
- ``secagg.service.files``: writing files safely (private from their first instant, never
  overwritten by surprise, never half-written).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from secagg.errors import ConfigurationError
from secagg.service.files import create_file, make_directory, refuse_existing
from secagg.service.identity import (
    ALLOW_LIST_FILE,
    AUTH_LABEL,
    CHALLENGE_BYTES,
    MIN_CHALLENGE_BYTES,
    AllowList,
    ClientIdentity,
    auth_message,
    check_client_id,
    new_challenge,
    sign_challenge,
)
from secagg.service.tls import (
    CA_CERT_FILE,
    SERVER_CERT_FILE,
    SERVER_KEY_FILE,
    TlsFiles,
    generate_tls,
    load_ca,
    load_tls_server_credentials,
)

__all__ = [
    "ALLOW_LIST_FILE",
    "AUTH_LABEL",
    "CA_CERT_FILE",
    "CHALLENGE_BYTES",
    "MIN_CHALLENGE_BYTES",
    "SERVER_CERT_FILE",
    "SERVER_KEY_FILE",
    "AllowList",
    "ClientIdentity",
    "Deployment",
    "TlsFiles",
    "auth_message",
    "create_deployment",
    "deployment_files",
    "generate_tls",
    "load_ca",
    "load_tls_server_credentials",
    "new_challenge",
    "sign_challenge",
]


@dataclass(frozen=True)
class Deployment:
    """The files :func:`create_deployment` wrote."""

    tls: TlsFiles
    allow_list: Path
    identities: Mapping[int, Path]
    """Client id -> its identity file."""


def deployment_files(directory: Path, clients: int, *, first_id: int = 0) -> Deployment:
    """Where :func:`create_deployment` would write, without writing anything.

    Refuses (``ConfigurationError``) a count or id range the protocol cannot carry.
    """
    if isinstance(clients, bool) or not isinstance(clients, int) or clients < 1:
        raise ConfigurationError(f"clients must be a positive int, got {clients!r}")
    check_client_id(first_id)
    check_client_id(first_id + clients - 1)
    directory = Path(directory)
    return Deployment(
        tls=TlsFiles.in_directory(directory / "tls"),
        allow_list=directory / ALLOW_LIST_FILE,
        identities=MappingProxyType(
            {
                client_id: directory / "clients" / f"client-{client_id}.key"
                for client_id in range(first_id, first_id + clients)
            }
        ),
    )


def create_deployment(directory: Path, clients: int, *, first_id: int = 0) -> Deployment:
    """Credentials for a coordinator and ``clients`` clients with ids ``first_id, first_id+1, ...``.

    Writes ``directory/tls/{ca.pem,server.pem,server.key}`` (:func:`generate_tls` with its
    defaults: localhost only), ``directory/clients/client-<id>.key`` per client and
    ``directory/allowlist.toml`` listing them all. Refuses (ConfigurationError) before
    writing anything if any of those files exists.
    """
    files = deployment_files(directory, clients, first_id=first_id)
    tls = files.tls
    for path in (
        tls.ca_cert,
        tls.server_cert,
        tls.server_key,
        files.allow_list,
        *files.identities.values(),
    ):
        refuse_existing(path)

    generate_tls(tls.ca_cert.parent)
    make_directory(Path(directory) / "clients")
    keys: dict[int, bytes] = {}
    for client_id, path in files.identities.items():
        identity = ClientIdentity.generate(client_id)
        identity.save(path)
        keys[client_id] = identity.public_key
    create_file(files.allow_list, AllowList(keys).to_toml().encode("ascii"), private=False)
    return files
