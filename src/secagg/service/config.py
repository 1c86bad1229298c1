"""A deployment's configuration: one TOML file read by both the coordinator and its clients.

Both ends derive the message size cap from the same round parameters, so they agree on it
without a handshake. Paths in the file are relative to the file itself. Flags on the
command line override what the file says.

::

    [round]
    dim = 2410
    max_clients = 10
    clip = 0.5
    value_bits = 16
    max_weight = 2000
    protocol = "secagg+"

    [coordinator]
    host = "127.0.0.1"
    port = 50051
    min_clients = 3
    cohort_wait = 60.0
    stage_timeout = 30.0
    ledger = "ledger.sqlite"

    [tls]
    ca = "tls/ca.pem"
    cert = "tls/server.pem"
    key = "tls/server.key"

    [clients]
    allow_list = "allowlist.toml"
    stage_timeout = 70.0   # a client's own deadline for the coordinator's next message

The client reads the same ``[round]`` section as its policy: it refuses any round whose
configuration differs from it (``secagg.policy``).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from secagg.errors import ConfigurationError
from secagg.params import Params, Protocol, ServerModel
from secagg.service.coordinator import CoordinatorSettings
from secagg.service.credentials import Deployment, TlsFiles

__all__ = ["DeploymentConfig"]

_ROUND_KEYS = {
    "dim": int,
    "max_clients": int,
    "clip": float,
    "value_bits": int,
    "max_weight": int,
    "protocol": str,
    "server_model": str,
    "adversarial_rate": float,
    "dropout_rate": float,
    "min_cohort": int,
}
_COORDINATOR_KEYS = {
    "host": str,
    "port": int,
    "min_clients": int,
    "cohort_wait": float,
    "stage_timeout": float,
    "ledger": str,
}


_CLIENTS_KEYS = {
    "allow_list": str,
    "stage_timeout": float,
}


def default_client_stage_timeout(coordinator_stage_timeout: float) -> float:
    """A client waits for the slowest client of a stage, then for the coordinator's work."""
    return 2 * coordinator_stage_timeout + 10.0


@dataclass(frozen=True)
class DeploymentConfig:
    params: Params
    coordinator: CoordinatorSettings
    tls: TlsFiles | None
    allow_list: Path | None
    ledger: Path
    client_stage_timeout: float = 70.0

    @classmethod
    def load(cls, path: Path) -> DeploymentConfig:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"cannot read {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"{path} is not valid TOML: {exc}") from None
        base = path.parent
        unknown = set(data) - {"round", "coordinator", "tls", "clients"}
        if unknown:
            raise ConfigurationError(f"{path}: unknown section(s) {sorted(unknown)}")
        round_ = _section(data, "round", _ROUND_KEYS, path)
        coord = _section(data, "coordinator", _COORDINATOR_KEYS, path)
        if "dim" not in round_ or "max_clients" not in round_:
            raise ConfigurationError(f"{path}: [round] needs dim and max_clients")
        if "protocol" in round_:
            round_["protocol"] = Protocol(round_["protocol"])
        if "server_model" in round_:
            round_["server_model"] = ServerModel(round_["server_model"])
        params = Params(**round_)
        ledger = base / str(coord.pop("ledger", "ledger.sqlite"))
        settings = CoordinatorSettings(params=params, **coord)
        tls_section = data.get("tls")
        tls = None
        if tls_section is not None:
            try:
                tls = TlsFiles(
                    ca_cert=base / tls_section["ca"],
                    server_cert=base / tls_section["cert"],
                    server_key=base / tls_section["key"],
                )
            except (KeyError, TypeError):
                raise ConfigurationError(f"{path}: [tls] needs ca, cert and key") from None
        clients = _section(data, "clients", _CLIENTS_KEYS, path)
        allow = clients.get("allow_list")
        client_timeout = clients.get(
            "stage_timeout", default_client_stage_timeout(settings.stage_timeout)
        )
        if client_timeout <= settings.stage_timeout:
            raise ConfigurationError(
                f"{path}: clients.stage_timeout ({client_timeout:g} s) must exceed "
                f"coordinator.stage_timeout ({settings.stage_timeout:g} s): a client waits for "
                "the slowest client of each stage"
            )
        return cls(
            params,
            settings,
            tls,
            None if allow is None else base / allow,
            ledger,
            client_timeout,
        )

    def with_overrides(self, **coordinator: Any) -> DeploymentConfig:
        """The same deployment with some coordinator settings replaced (from flags)."""
        given = {k: v for k, v in coordinator.items() if v is not None}
        return replace(self, coordinator=replace(self.coordinator, **given))

    @classmethod
    def write(
        cls,
        root: Path,
        deployment: Deployment,
        params: Params,
        *,
        port: int = 0,
        min_clients: int = 3,
        stage_timeout: float = 30.0,
        cohort_wait: float = 60.0,
    ) -> Path:
        """Write ``root/deployment.toml`` for a deployment that ``create_deployment`` made
        under ``root`` (paths relative to it, so the folder can move)."""
        path = root / "deployment.toml"
        tls = deployment.tls
        path.write_text(
            cls.render(
                params=params,
                port=port,
                min_clients=min_clients,
                stage_timeout=stage_timeout,
                cohort_wait=cohort_wait,
                ledger="ledger.sqlite",
                tls=tuple(  # type: ignore[arg-type]
                    str(p.relative_to(root)) for p in (tls.ca_cert, tls.server_cert, tls.server_key)
                ),
                allow_list=str(deployment.allow_list.relative_to(root)),
            )
        )
        return path

    @staticmethod
    def render(
        *,
        params: Params,
        port: int,
        min_clients: int,
        stage_timeout: float,
        cohort_wait: float,
        ledger: str,
        tls: tuple[str, str, str] | None,
        allow_list: str | None,
    ) -> str:
        """The TOML text of a deployment (relative paths are relative to where it is saved)."""
        lines = [
            "[round]",
            f"dim = {params.dim}",
            f"max_clients = {params.max_clients}",
            f"clip = {params.clip!r}",
            f"value_bits = {params.value_bits}",
            f"max_weight = {params.max_weight}",
            f'protocol = "{params.protocol.value}"',
            f'server_model = "{params.server_model.value}"',
            f"adversarial_rate = {params.adversarial_rate!r}",
            f"dropout_rate = {params.dropout_rate!r}",
            f"min_cohort = {params.min_cohort}",
            "",
            "[coordinator]",
            'host = "127.0.0.1"',
            f"port = {port}",
            f"min_clients = {min_clients}",
            f"cohort_wait = {cohort_wait!r}",
            f"stage_timeout = {stage_timeout!r}",
            f'ledger = "{ledger}"',
        ]
        if tls is not None:
            ca, cert, key = tls
            lines += ["", "[tls]", f'ca = "{ca}"', f'cert = "{cert}"', f'key = "{key}"']
        if allow_list is not None:
            lines += [
                "",
                "[clients]",
                f'allow_list = "{allow_list}"',
                f"stage_timeout = {default_client_stage_timeout(stage_timeout)!r}",
            ]
        return "\n".join(lines) + "\n"


def _section(data: dict[str, Any], name: str, keys: dict[str, type], path: Path) -> dict[str, Any]:
    section = data.get(name, {})
    if not isinstance(section, dict):
        raise ConfigurationError(f"{path}: [{name}] must be a table")
    out: dict[str, Any] = {}
    for key, value in section.items():
        kind = keys.get(key)
        if kind is None:
            raise ConfigurationError(f"{path}: unknown key {name}.{key}")
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ConfigurationError(f"{path}: {name}.{key} must be a {kind.__name__}")
        out[key] = value
    return out
