"""Each served scheme's side of the service: the scheme the coordinator runs, the scheme a
client runs (its ``check`` is the client's policy), and the keys a deployment provisions.

The registry (``secagg.schemes.registry``) says which schemes are served; each has one row
in each table here, and nothing else in the service asks which scheme a deployment runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from secagg.errors import ConfigurationError
from secagg.parallel import MaskApplier
from secagg.schemes.base import Scheme, SchemeSettings
from secagg.schemes.ckks import CkksSettings
from secagg.schemes.masking import MaskingScheme
from secagg.schemes.masking.parameters import Params
from secagg.schemes.registry import SchemeKind
from secagg.service.ckks_deployment import (
    client_context_path,
    load_client_context,
    load_server_context,
    provision_ckks_keys,
)
from secagg.service.config import DeploymentConfig
from secagg.service.identity import AllowList
from secagg.service.sessions import SessionSide
from secagg.service.settings import CoordinatorSettings

__all__ = [
    "client_policy",
    "coordinator_scheme",
    "coordinator_sessions",
    "masking_coordinator",
    "provision_keys",
]


def coordinator_scheme(config: DeploymentConfig, allow_list: AllowList) -> Scheme:
    """The coordinator's side of the deployment's scheme."""
    return _COORDINATOR[config.scheme](config, allow_list)


def client_policy(
    config: DeploymentConfig, identity_path: Path | None = None
) -> tuple[Scheme, Mapping[int, bytes]]:
    """The client's side of the deployment's scheme (its ``check`` is the client's policy)
    and the PKI. The allow-list is required, since the cohort of every round must lie within
    it."""
    if config.allow_list is None:
        raise ConfigurationError("the deployment names no allow-list ([clients] allow_list)")
    keys = AllowList.load(config.allow_list).keys
    return _CLIENT[config.scheme](config, keys, identity_path), keys


def provision_keys(
    directory: Path, identities: Mapping[int, Path], settings: SchemeSettings
) -> tuple[Path, ...]:
    """Write the keys a deployment of ``settings`` needs beyond the clients' identities
    (``secagg certs``, the demo); the files written."""
    return _PROVISION[settings.kind](directory, identities, settings)


def coordinator_sessions(
    settings: CoordinatorSettings, allow_list: AllowList
) -> SessionSide | None:
    """The coordinator's side of the deployment's sessions that span rounds (None: its
    rounds are one-shot). Sessions are masking's: ``CoordinatorSettings`` refuses
    ``session_rounds`` under another scheme."""
    if not settings.sessions:
        return None
    return SessionSide(
        Params.of(settings.params, "a coordinator of sessions"),
        max_rounds=settings.session_rounds,
        max_seconds=settings.session_seconds,
        pki=allow_list.keys,
        apply_masks=MaskApplier(start_method="forkserver"),
    )


def masking_coordinator(params: Params, allow_list: AllowList) -> MaskingScheme:
    """The coordinator's side of masking: the allow-list is the PKI that active mode checks
    signed keys and survivor sets against, and unmasking runs on every core, through a fork
    server (this process runs gRPC)."""
    return MaskingScheme(
        params, pki=allow_list.keys, apply_masks=MaskApplier(start_method="forkserver")
    )


# --------------------------------------------------------------------------- masking
def _masking_coordinator(config: DeploymentConfig, allow_list: AllowList) -> Scheme:
    return masking_coordinator(Params.of(config.params, "a masking coordinator"), allow_list)


def _masking_client(
    config: DeploymentConfig, keys: Mapping[int, bytes], identity_path: Path | None
) -> Scheme:
    del identity_path  # a masking client's keys are its identity and the allow-list
    params = Params.of(config.params, "a masking client")
    return MaskingScheme(params, pki=keys, allowed=frozenset(keys))


def _no_keys(
    directory: Path, identities: Mapping[int, Path], settings: SchemeSettings
) -> tuple[Path, ...]:
    del directory, identities, settings  # each client's identity is all masking needs
    return ()


# --------------------------------------------------------------------------- CKKS
def _ckks_coordinator(config: DeploymentConfig, allow_list: AllowList) -> Scheme:
    """CKKS with the evaluation context (checked to hold no secret key)."""
    del allow_list  # nothing is signed
    settings = CkksSettings.of(config.params, "a CKKS coordinator")
    if config.server_context is None:
        raise ConfigurationError("a CKKS deployment needs [ckks] server_context")
    context = load_server_context(config.server_context, settings.params)
    return settings.scheme(server_context=context)


def _ckks_client(
    config: DeploymentConfig, keys: Mapping[int, bytes], identity_path: Path | None
) -> Scheme:
    """A key holder: its context, with the secret key, is the one beside its identity file
    (checked against the deployment's parameters)."""
    settings = CkksSettings.of(config.params, "a CKKS client")
    if identity_path is None:
        raise ConfigurationError(
            "a CKKS client needs its identity file: its CKKS context sits beside it"
        )
    context = load_client_context(client_context_path(identity_path), settings.params)
    return settings.scheme(client_context=context, allowed=frozenset(keys))


def _ckks_keys(
    directory: Path, identities: Mapping[int, Path], settings: SchemeSettings
) -> tuple[Path, ...]:
    params = CkksSettings.of(settings, "CKKS keys").params
    server, clients = provision_ckks_keys(directory, identities, params)
    return (server, *clients.values())


_COORDINATOR: Mapping[SchemeKind, Callable[[DeploymentConfig, AllowList], Scheme]] = {
    SchemeKind.MASKING: _masking_coordinator,
    SchemeKind.CKKS: _ckks_coordinator,
}
_CLIENT: Mapping[
    SchemeKind, Callable[[DeploymentConfig, Mapping[int, bytes], Path | None], Scheme]
] = {
    SchemeKind.MASKING: _masking_client,
    SchemeKind.CKKS: _ckks_client,
}
_PROVISION: Mapping[
    SchemeKind, Callable[[Path, Mapping[int, Path], SchemeSettings], tuple[Path, ...]]
] = {
    SchemeKind.MASKING: _no_keys,
    SchemeKind.CKKS: _ckks_keys,
}
