"""Protocol test vectors: fixed randomness in, every message and the result out.

``python -m tests.vectors.protocol_vectors`` (from the repository root) rewrites
``tests/vectors/protocol/*.json``; ``tests/protocol/test_vectors.py`` replays every file and
demands the same bytes. A vector records its inputs (the harness's seed, which fixes every
key, share, rounding draw and input), every message in the order it travelled, and either
the unmasked ring sum or the failure that ended the round. Failing vectors cover a server
abort, client aborts on forged server claims, and decoder rejections.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from secagg.errors import ClientAbort, DecodeError, RoundAborted
from secagg.protocol.codec import Message, decode
from secagg.schemes.masking.messages import UnmaskRequest
from tests.protocol.harness import Harness

DIRECTORY = Path(__file__).parent / "protocol"

SPECS: list[dict[str, Any]] = [
    {"name": "secagg-no-drops", "n": 4, "degree": None, "threshold": 2, "dim": 3, "seed": 1},
    {
        "name": "secagg-drop-at-every-stage",
        "n": 8,
        "degree": None,
        "threshold": 3,
        "dim": 4,
        "seed": 2,
        "skip": {"advertise": [0], "share": [1], "mask": [2], "unmask": [3]},
    },
    {
        "name": "secagg-plus-drops",
        "n": 10,
        "degree": 4,
        "threshold": 2,
        "dim": 3,
        "seed": 3,
        "skip": {"share": [4], "mask": [7]},
    },
    {
        "name": "fails-server-aborts-below-threshold",
        "n": 5,
        "degree": None,
        "threshold": 4,
        "dim": 2,
        "seed": 4,
        "skip": {"mask": [0, 1]},
    },
    {
        "name": "fails-client-listed-as-dropped",
        "n": 5,
        "degree": None,
        "threshold": 2,
        "dim": 2,
        "seed": 5,
        "forge": {"client": 1, "dropped_add": [1]},
    },
    {
        "name": "fails-client-asked-for-both-shares",
        "n": 5,
        "degree": None,
        "threshold": 2,
        "dim": 2,
        "seed": 6,
        "forge": {"client": 1, "dropped_add": [2]},
    },
]

STAGES = ("commit", "reveal", "advertise", "share", "mask", "unmask")


def _hex(message: Message) -> str:
    return message.encode().hex()


def record(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the round a spec describes and record everything that crossed the wire."""
    h = Harness(
        spec["n"],
        degree=spec["degree"],
        threshold=spec["threshold"],
        dim=spec["dim"],
        seed=spec["seed"],
        agree=False,
    )
    skip: dict[str, list[int]] = spec.get("skip", {})
    forge: dict[str, Any] | None = spec.get("forge")
    transcript: list[dict[str, Any]] = []
    original_receive = h.server.receive

    def receive(sender: int, data: Message | bytes) -> None:
        raw = data if isinstance(data, bytes) else data.encode()
        transcript.append({"from": sender, "to": "server", "hex": raw.hex()})
        original_receive(sender, data)

    h.server.receive = receive  # type: ignore[method-assign]
    outcome: dict[str, Any]
    try:
        for stage in STAGES:
            if stage == "unmask" and forge is not None:
                victim = forge["client"]
                request = h.outgoing[victim]
                assert isinstance(request, UnmaskRequest)
                h.outgoing[victim] = dataclasses.replace(
                    request, dropped=(*request.dropped, *forge["dropped_add"])
                )
            if stage != "commit":
                for client, message in sorted(h.outgoing.items()):
                    transcript.append({"from": "server", "to": client, "hex": _hex(message)})
            getattr(h, stage)(skip=skip.get(stage, []))
        result = h.server.result
        outcome = {
            "outcome": "completed",
            "included": list(result.included),
            "ring_total": [int(v) for v in result.total],
        }
    except RoundAborted as exc:
        outcome = {"outcome": "server-aborted", "stage": str(exc.stage)}
    except ClientAbort as exc:
        outcome = {"outcome": "client-aborted", "reason": exc.reason.value}
    return {
        "spec": spec,
        "config": h.config.encode().hex(),
        "session_id": h.session_id.hex(),
        "messages": transcript,
        **outcome,
    }


def decoder_rejections() -> dict[str, Any]:
    """Bytes every decoder must refuse, with the reason each one is wrong."""
    h = Harness(4, threshold=2, dim=2, seed=7)
    advert = h.adverts[0].encode()  # client 0's answer to the contributions
    # The session-agreement messages are covered by the round vectors above.
    cases = [
        ("trailing-byte", advert + b"\x00"),
        ("truncated", advert[:-1]),
        ("bad-magic", b"ZZ" + advert[2:]),
        ("bad-version", advert[:2] + b"\x02" + advert[3:]),
        ("unknown-tag", advert[:3] + b"\x7f" + advert[4:]),
        ("empty", b""),
    ]
    for name, data in cases:
        try:
            decode(data)
        except DecodeError:
            continue
        raise AssertionError(f"decoder accepted {name}")
    return {"rejected": [{"name": name, "hex": data.hex()} for name, data in cases]}


def write_all() -> None:
    DIRECTORY.mkdir(exist_ok=True)
    for spec in SPECS:
        path = DIRECTORY / f"{spec['name']}.json"
        path.write_text(json.dumps(record(spec), indent=1) + "\n")
    (DIRECTORY / "fails-decoder-rejections.json").write_text(
        json.dumps(decoder_rejections(), indent=1) + "\n"
    )


if __name__ == "__main__":
    write_all()
