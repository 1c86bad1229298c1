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
    upload_window = 64     # clients sent a model-sized message at once (flow control)

    [tls]
    ca = "tls/ca.pem"
    cert = "tls/server.pem"
    key = "tls/server.key"

    [clients]
    allow_list = "allowlist.toml"
    stage_timeout = 70.0   # a client's own deadline for the coordinator's next message

    [task]
    name = "random"        # random | digits: what `secagg join` trains by default
    clients = 10           # digits: the data is split into this many shares
    seed = 0

A deployment runs one scheme, named in ``[round]``: ``scheme = "masking"`` (the default:
SecAgg or SecAgg+, the keys above) or ``scheme = "ckks"`` (homomorphic encryption; ``[round]``
then holds only ``dim``, ``max_clients``, ``clip``, ``max_weight`` and ``min_cohort``, and a
``[ckks]`` section the rest)::

    [round]
    scheme = "ckks"
    dim = 2410
    max_clients = 10
    clip = 0.5
    max_weight = 2000

    [ckks]
    poly_modulus_degree = 8192
    coeff_mod_bit_sizes = [60, 40, 40]
    scale_bits = 40
    key_holders = 2                        # clients asked to decrypt each sum
    server_context = "ckks/server.context" # the coordinator's evaluation context

Each client's CKKS context (with the secret key) sits beside its identity file
(``secagg.service.ckks_deployment``). ``scheme = "plaintext"`` is refused: the service has no
plaintext path.

A masking deployment may add distributed differential privacy (``secagg.dp``): every client
adds discrete noise to its update before masking, calibrated so that every sum the
coordinator can reveal (at least ``[round] min_cohort`` inputs, at most ``max_clients``) is
(epsilon, delta)-DP. The guarantee's sizes are the round's (``dim``, ``min_cohort``,
``max_clients``); the mean is unweighted, so ``max_weight`` is 1::

    [round]
    scheme = "masking"
    dim = 2410
    max_clients = 10
    max_weight = 1
    min_cohort = 7

    [dp]
    epsilon = 8.0                 # over `rounds` rounds; or noise_multiplier = 1.1 instead
    delta = 1e-05
    l2_clip = 1.2                 # each update is scaled down to this L2 norm
    bits = 20                     # per coordinate of the noisy sum (what travels)
    mechanism = "skellam"         # or "discrete-gaussian"
    rounds = 10
    sampling_rate = 1.0           # 1: every connected client takes part in every round

Both ends calibrate the same plan from it; a client refuses any round whose noise differs
from its own deployment's (less noise, or none, is a ``downgrade``).

The client reads the same ``[round]`` section as its policy: it refuses any round whose
configuration differs from it (``secagg.schemes.masking.policy``, ``CkksScheme.check``). Every
value is checked when the file is loaded; a mistake is one ``ConfigurationError`` line naming the
file, the key and what it must be (an unknown protocol, a port outside 0..65535, a timeout
that is not positive, a ``dim`` too large for gRPC's messages, ``min_clients`` above
``max_clients``...).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from secagg.dp.calibrate import DpConfig, DpPlan
from secagg.dp.settings import DpSettings, dp_file_names, name_knobs
from secagg.errors import ConfigurationError
from secagg.hazmat.ckks import CkksParameters
from secagg.knobs import read_section, read_table, section_lines, settings_of
from secagg.schemes.base import SchemeSettings
from secagg.schemes.ckks import CkksSettings
from secagg.schemes.masking.parameters import Params
from secagg.schemes.registry import SchemeKind, scheme_entry, served_schemes
from secagg.service.ckks_deployment import SERVER_CONTEXT_FILE
from secagg.service.credentials import Deployment, TlsFiles
from secagg.service.files import create_file, refuse_existing
from secagg.service.settings import CoordinatorSettings
from secagg.service.tasks import Task, TaskSpec

__all__ = ["CONFIG_FILE", "DeploymentConfig", "default_client_stage_timeout"]

CONFIG_FILE = "deployment.toml"

# The knobs declared on their settings classes (secagg.knobs): read and written from them.
_MASKING = settings_of(Params)
_CKKS = settings_of(CkksSettings)
_COORDINATOR = settings_of(CoordinatorSettings)
_DP = settings_of(DpSettings)
_ROUND_KEYS: dict[str, type] = {"scheme": str} | {
    s.key: s.kind for s in (*_MASKING, *_CKKS) if s.knob.section == "round"
}
# What a CKKS round shares with masking; the other [round] keys are masking's alone.
_COMMON_ROUND_KEYS = frozenset(s.key for s in _CKKS if s.knob.section == "round")
# [ckks]: the CKKS parameters (secagg.hazmat.ckks, below the knobs) and the deployment's files.
_CKKS_KEYS: dict[str, type] = {
    "poly_modulus_degree": int,
    "coeff_mod_bit_sizes": list,
    "scale_bits": int,
    "server_context": str,
} | {s.key: s.kind for s in _CKKS if s.knob.section == "ckks"}
_CLIENTS_KEYS = {
    "allow_list": str,
    "stage_timeout": float,
}
_TASK_KEYS: dict[str, type] = {s.key: s.kind for s in settings_of(TaskSpec)}
_SECTIONS = frozenset({"round", "coordinator", "tls", "clients", "task", "ckks", "dp"})
_ENUM_KEYS: dict[str, type[StrEnum]] = {
    s.key: s.enum for s in _MASKING if s.enum is not None and issubclass(s.enum, StrEnum)
}


def default_client_stage_timeout(coordinator_stage_timeout: float) -> float:
    """A client waits for the slowest client of a stage, then for the coordinator's work."""
    return 2 * coordinator_stage_timeout + 10.0


@dataclass(frozen=True)
class DeploymentConfig:
    """A deployment, as both ends read it from ``deployment.toml``.

    ``params`` are the round parameters of its scheme: ``Params`` (masking) or
    ``CkksSettings`` (CKKS, whose coordinator loads its evaluation context from
    ``server_context``).
    """

    params: SchemeSettings
    coordinator: CoordinatorSettings
    tls: TlsFiles | None
    allow_list: Path | None
    ledger: Path
    client_stage_timeout: float = 70.0
    task: TaskSpec = field(default_factory=TaskSpec)
    server_context: Path | None = None

    @property
    def scheme(self) -> SchemeKind:
        return self.params.kind

    @property
    def dp_plan(self) -> DpPlan | None:
        """The calibrated distributed-DP plan of a masking deployment with a ``[dp]`` section."""
        return self.params.dp_plan

    @classmethod
    def load(cls, path: Path) -> DeploymentConfig:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ConfigurationError(f"cannot read {path}: {reason}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"{path} is not valid TOML: {exc}") from None
        base = path.parent
        unknown = set(data) - _SECTIONS
        if unknown:
            raise ConfigurationError(f"{path}: unknown section(s) {sorted(unknown)}")
        round_ = read_table(data, "round", _ROUND_KEYS, str(path))
        coord = _coordinator_section(data, path)
        if "dim" not in round_ or "max_clients" not in round_:
            raise ConfigurationError(f"{path}: [round] needs dim and max_clients")
        scheme = _scheme(round_.pop("scheme", SchemeKind.MASKING.value), path)
        params: SchemeSettings
        server_context: Path | None = None
        if scheme is SchemeKind.CKKS:
            if "dp" in data:
                raise ConfigurationError(
                    f'{path}: [dp] belongs to a deployment with round.scheme = "masking": '
                    "distributed DP adds each client's noise before masking, and CKKS has none"
                )
            params, server_context = _ckks_round(data, round_, path)
        else:
            if "ckks" in data:
                raise ConfigurationError(
                    f'{path}: [ckks] belongs to a deployment with round.scheme = "ckks"; '
                    f'this one runs "{scheme.value}"'
                )
            for key, enum in _ENUM_KEYS.items():
                if key in round_:
                    round_[key] = _member(enum, round_[key], f"{path}: round.{key}")
            params = _masking_round(data, round_, path)
        ledger = base / str(coord.pop("ledger"))
        settings = _checked(
            lambda: CoordinatorSettings(params=params, **coord), f"{path}: [coordinator]"
        )
        tls = _tls_section(data, path)
        clients = read_table(data, "clients", _CLIENTS_KEYS, str(path))
        allow = clients.get("allow_list")
        client_timeout = clients.get(
            "stage_timeout", default_client_stage_timeout(settings.stage_timeout)
        )
        _check_client_timeout(client_timeout, settings.stage_timeout, path)
        task_section = read_table(data, "task", _TASK_KEYS, str(path))
        task = _checked(
            lambda: TaskSpec(
                task=task_section.get("name", Task.RANDOM),
                clients=task_section.get("clients", params.max_clients),
                seed=task_section.get("seed", 0),
            ),
            f"{path}: [task]",
        )
        return cls(
            params,
            settings,
            tls,
            None if allow is None else base / allow,
            ledger,
            client_timeout,
            task,
            server_context,
        )

    def with_overrides(self, **coordinator: Any) -> DeploymentConfig:
        """The same deployment with some coordinator settings replaced (from flags)."""
        given = {k: v for k, v in coordinator.items() if v is not None}
        settings = replace(self.coordinator, **given)
        if settings.stage_timeout >= self.client_stage_timeout:
            raise ConfigurationError(
                f"a stage timeout of {settings.stage_timeout:g} s must stay below the clients' "
                f"own deadline ([clients] stage_timeout = {self.client_stage_timeout:g} s): a "
                "client waits for the slowest client of each stage"
            )
        return replace(self, coordinator=settings)

    @classmethod
    def write(
        cls,
        root: Path,
        deployment: Deployment,
        params: SchemeSettings,
        *,
        port: int = 0,
        min_clients: int = 3,
        stage_timeout: float = 30.0,
        cohort_wait: float = 60.0,
        task: TaskSpec | None = None,
        session_rounds: int = 0,
    ) -> Path:
        """Write ``root/deployment.toml`` for a deployment that ``create_deployment`` made
        under ``root`` (paths relative to it, so the folder can move). Never overwrites. A
        CKKS deployment's keys are ``provision_ckks_keys``'s, under the same ``root``.
        ``session_rounds`` > 0 runs rounds in sessions that span rounds of at most that many."""
        path = root / CONFIG_FILE
        refuse_existing(path)
        tls = deployment.tls
        text = cls.render(
            params=params,
            port=port,
            min_clients=min_clients,
            stage_timeout=stage_timeout,
            cohort_wait=cohort_wait,
            ledger="ledger.sqlite",
            tls=(
                str(tls.ca_cert.relative_to(root)),
                str(tls.server_cert.relative_to(root)),
                str(tls.server_key.relative_to(root)),
            ),
            allow_list=str(deployment.allow_list.relative_to(root)),
            task=task,
            session_rounds=session_rounds,
        )
        create_file(path, text.encode(), private=False)
        return path

    @staticmethod
    def render(
        *,
        params: SchemeSettings,
        port: int,
        min_clients: int,
        stage_timeout: float,
        cohort_wait: float,
        ledger: str,
        tls: tuple[str, str, str] | None,
        allow_list: str | None,
        task: TaskSpec | None = None,
        session_rounds: int = 0,
    ) -> str:
        """The TOML text of a deployment (relative paths are relative to where it is saved)."""
        round_lines, scheme_sections = _SCHEME_LINES[params.kind](params)
        lines = ["[round]", *round_lines, *scheme_sections, "", "[coordinator]"]
        lines += [
            'host = "127.0.0.1"',
            f"port = {port}",
            f"min_clients = {min_clients}",
            f"cohort_wait = {float(cohort_wait)!r}",
            f"stage_timeout = {float(stage_timeout)!r}",
            f'ledger = "{ledger}"',
        ]
        if session_rounds:
            lines.append(f"session_rounds = {session_rounds}")
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
        if task is not None:
            lines += [
                "",
                "[task]",
                *section_lines(task, "task"),
            ]
        return "\n".join(lines) + "\n"


def _dp_lines(config: DpConfig) -> list[str]:
    """The ``[dp]`` section of a deployment (the sizes are the ``[round]``'s)."""
    return ["", "[dp]", *section_lines(DpSettings.of(config), "dp")]


def _coordinator_section(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """``[coordinator]``: the coordinator's knobs, and the ledger's file (the deployment's)."""
    table = data.get("coordinator", {})
    if not isinstance(table, dict):
        raise ConfigurationError(f"{path}: [coordinator] must be a table")
    rest = dict(table)
    ledger = rest.pop("ledger", "ledger.sqlite")
    if not isinstance(ledger, str):
        raise ConfigurationError(f"{path}: coordinator.ledger must be a string")
    knobs = read_section({"coordinator": rest}, "coordinator", _COORDINATOR, str(path))
    return knobs | {"ledger": ledger}


def _masking_round(data: dict[str, Any], round_: dict[str, Any], path: Path) -> Params:
    """A masking deployment's [round] and, if present, its [dp] section."""
    if "dp" not in data:
        params: Params = _checked(lambda: Params(**round_), f"{path}: [round]")
        return params
    section = read_section(data, "dp", _DP, str(path))
    if "l2_clip" not in section:
        raise ConfigurationError(f"{path}: [dp] needs l2_clip (each update's L2 norm bound)")
    dp = _checked(lambda: DpSettings(**section), f"{path}: [dp]", dp_file_names())
    sizes = {
        "dim": round_["dim"],
        "min_clients": round_.get("min_cohort", 1),
        "max_clients": round_["max_clients"],
    }
    params = _checked(
        lambda: Params(**round_, dp=dp.config(**sizes)),
        f"{path}: [round] with [dp]",
        dp_file_names(),
    )
    return params


def _masking_lines(settings: SchemeSettings) -> tuple[list[str], list[str]]:
    """A masking deployment's ``[round]`` lines, and its ``[dp]`` section if it has one."""
    params = Params.of(settings, "a masking deployment file")
    round_lines = [f'scheme = "{SchemeKind.MASKING.value}"', *section_lines(params, "round")]
    return round_lines, [] if params.dp is None else _dp_lines(params.dp)


def _ckks_lines(settings: SchemeSettings) -> tuple[list[str], list[str]]:
    """A CKKS deployment's ``[round]`` lines and its ``[ckks]`` section."""
    params = CkksSettings.of(settings, "a CKKS deployment file")
    round_lines = [f'scheme = "{SchemeKind.CKKS.value}"', *section_lines(params, "round")]
    ckks = params.params
    section = [
        "",
        "[ckks]",
        f"poly_modulus_degree = {ckks.poly_modulus_degree}",
        f"coeff_mod_bit_sizes = {list(ckks.coeff_mod_bit_sizes)}",
        f"scale_bits = {ckks.scale_bits}",
        *section_lines(params, "ckks"),
        f'server_context = "{SERVER_CONTEXT_FILE}"',
    ]
    return round_lines, section


# Each served scheme's lines in a deployment file (the registry lists which are served).
_SCHEME_LINES = {SchemeKind.MASKING: _masking_lines, SchemeKind.CKKS: _ckks_lines}


def _scheme(value: str, path: Path) -> SchemeKind:
    kind = SchemeKind(_member(SchemeKind, value, f"{path}: round.scheme"))
    if not scheme_entry(kind.value).served:
        served = " or ".join(f'"{e.kind.value}"' for e in served_schemes())
        raise ConfigurationError(
            f'{path}: round.scheme = "{kind.value}" cannot be served: the service has no '
            f"{kind.value} path ({kind.value} runs in process only, as `secagg simulate "
            f"--scheme {kind.value}`); use {served}"
        )
    return kind


def _ckks_round(
    data: dict[str, Any], round_: dict[str, Any], path: Path
) -> tuple[CkksSettings, Path]:
    """A CKKS deployment's [round] (the keys it shares with masking) and [ckks] sections."""
    masking_only = sorted(set(round_) - _COMMON_ROUND_KEYS)
    if masking_only:
        raise ConfigurationError(
            f"{path}: round.{masking_only[0]} is a masking parameter; this deployment's "
            'round.scheme is "ckks" (its parameters are in [ckks])'
        )
    section = read_table(data, "ckks", _CKKS_KEYS, str(path))
    sizes = section.pop("coeff_mod_bit_sizes", None)
    if sizes is not None and not all(isinstance(b, int) and not isinstance(b, bool) for b in sizes):
        raise ConfigurationError(f"{path}: ckks.coeff_mod_bit_sizes must be a list of integers")
    context = section.pop("server_context", SERVER_CONTEXT_FILE)
    if not context:
        raise ConfigurationError(f"{path}: ckks.server_context must be a file name")
    key_holders = section.pop("key_holders", 2)
    defaults = CkksParameters()
    ckks = _checked(
        lambda: CkksParameters(
            section.get("poly_modulus_degree", defaults.poly_modulus_degree),
            tuple(sizes) if sizes is not None else defaults.coeff_mod_bit_sizes,
            section.get("scale_bits", defaults.scale_bits),
        ),
        f"{path}: [ckks]",
    )
    settings = _checked(
        lambda: CkksSettings(**round_, params=ckks, key_holders=key_holders), f"{path}: [round]"
    )
    return settings, path.parent / context


def _checked(make: Any, where: str, names: dict[str, str] | None = None) -> Any:
    """``make()``, with any ConfigurationError prefixed by where in the file it comes from
    (and, with ``names``, the parameters it mentions called by their keys in the file)."""
    try:
        return make()
    except ConfigurationError as exc:
        message = str(exc) if names is None else name_knobs(str(exc), names)
        raise ConfigurationError(f"{where} {message}") from None


def _member(enum: type[StrEnum], value: str, what: str) -> StrEnum:
    try:
        return enum(value)
    except ValueError:
        choices = ", ".join(f'"{m.value}"' for m in enum)
        raise ConfigurationError(f"{what} must be one of {choices}; got {value!r}") from None


def _tls_section(data: dict[str, Any], path: Path) -> TlsFiles | None:
    section = data.get("tls")
    if section is None:
        return None
    base = path.parent
    if not isinstance(section, dict) or set(section) != {"ca", "cert", "key"}:
        raise ConfigurationError(f"{path}: [tls] needs exactly ca, cert and key")
    if not all(isinstance(v, str) and v for v in section.values()):
        raise ConfigurationError(f"{path}: [tls] ca, cert and key must be file names")
    return TlsFiles(
        ca_cert=base / section["ca"],
        server_cert=base / section["cert"],
        server_key=base / section["key"],
    )


def _check_client_timeout(client_timeout: float, coordinator_timeout: float, path: Path) -> None:
    if not client_timeout > 0 or client_timeout == float("inf"):
        raise ConfigurationError(
            f"{path}: clients.stage_timeout must be a positive number of seconds, "
            f"got {client_timeout!r}"
        )
    if client_timeout <= coordinator_timeout:
        raise ConfigurationError(
            f"{path}: clients.stage_timeout ({client_timeout:g} s) must exceed "
            f"coordinator.stage_timeout ({coordinator_timeout:g} s): a client waits for "
            "the slowest client of each stage"
        )
