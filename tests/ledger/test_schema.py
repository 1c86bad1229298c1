"""The ledger's schema: what a new ledger holds, what it may never hold, and every earlier
version read as it is and upgraded whole."""

from __future__ import annotations

import secrets
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from secagg.errors import LedgerError
from secagg.ledger import SCHEMA_VERSION, Ledger
from secagg.protocol.runner import RoundOutcome
from tests.ledger.helpers import (
    COHORT,
    DIM,
    SESSION,
    TASK,
    _aggregate,
    _complete,
    _complete_dp,
    _plan,
    _raw,
    _start,
)


def test_a_new_file_gets_the_schema_its_version_and_write_ahead_logging(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    Ledger(path).close()
    with _raw(path) as raw:
        tables = {n for (n,) in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        expected = {
            "schema_version", "rounds", "cohort", "stage_timings", "drops", "aggregates",
            "dp_rounds", "session_rounds",
        }  # fmt: skip
        assert tables == expected
        assert raw.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    with Ledger(path) as reopened:  # opening an existing ledger keeps it as it is
        assert reopened.rounds() == []
        assert reopened.next_round_id() == 1


def test_a_newer_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    Ledger(path).close()
    with _raw(path) as raw:
        raw.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(LedgerError, match="newer than this secagg"):
        Ledger(path)
    with pytest.raises(LedgerError, match="newer than this secagg"):
        Ledger.open_readonly(path)


def test_the_file_holds_no_secret_and_no_vector_but_the_aggregate(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    updates = rng.uniform(-1, 1, (len(COHORT), DIM))  # the clients' individual updates
    secret = secrets.token_bytes(32)  # stands for any key, seed or share of the round
    mean = updates[[0, 2, 3, 4]].mean(axis=0)
    path = tmp_path / "ledger.db"
    with Ledger(path) as ledger:
        _start(ledger, 1)
        ledger.record_stage(1, "share", 0.5)
        ledger.record_drop(1, 5, "masked-input", "missed-masked-input")
        _complete(ledger, 1, aggregate=mean)
        _start(ledger, 2)
        ledger.abort_round(2, "too few")
        _start(ledger, 3, session_round=1)
    files = [p for p in tmp_path.iterdir() if p.name.startswith("ledger.db")]
    raw_bytes = b"".join(p.read_bytes() for p in files)
    assert secret not in raw_bytes
    for update in updates:
        assert update.astype("<f8").tobytes() not in raw_bytes
        assert update.astype("<f4").tobytes() not in raw_bytes
    assert mean.astype("<f8").tobytes() in raw_bytes  # the scan does see stored vectors

    # What may hold a value at all: an allow-list, so a new column is a conscious decision.
    with _raw(path) as raw:
        tables = [n for (n,) in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        columns = {t: [c[1] for c in raw.execute(f"PRAGMA table_info({t})")] for t in tables}
        assert columns == {
            "schema_version": ["version"],
            "rounds": [
                "round_id", "session_id", "task_hash", "protocol", "degree", "threshold", "dim",
                "started_at", "finished_at", "outcome", "abort_reason",
                "upload_bytes_per_client", "download_bytes_per_client",
            ],
            "cohort": ["round_id", "client_id", "included"],
            "stage_timings": ["round_id", "stage", "seconds"],
            "drops": ["drop_id", "round_id", "client_id", "stage", "reason", "detail"],
            "aggregates": ["round_id", "length", "total_weight", "sha256", "data"],
            "dp_rounds": [
                "round_id", "series", "mechanism", "delta", "epsilon", "epsilon_spent",
                "epsilon_target", "target_rounds",
            ],
            "session_rounds": ["round_id", "round_number"],
        }  # fmt: skip
        blobs = {
            (t, c, bytes(v))
            for t, cs in columns.items()
            for c in cs
            for (v,) in raw.execute(f"SELECT {c} FROM {t} WHERE typeof({c}) = 'blob'")
        }
    (digest,) = [v for t, c, v in blobs if c == "sha256"]
    assert blobs == {
        ("rounds", "session_id", SESSION),
        ("rounds", "task_hash", TASK),
        ("aggregates", "sha256", digest),
        ("aggregates", "data", mean.astype("<f8").tobytes()),
    }


def test_a_privacy_record_is_as_final_as_its_round(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as ledger:
        _complete_dp(ledger, 1, _plan(), COHORT)
    with _raw(path) as raw, pytest.raises(sqlite3.IntegrityError, match="cannot be changed"):
        raw.execute("UPDATE dp_rounds SET epsilon_spent = 0 WHERE round_id = 1")


def test_a_session_round_keeps_its_place_and_its_kind(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as ledger:
        _start(ledger, 1)
        _start(ledger, 2, session_round=1)
        _start(ledger, 3, session_round=2)
        one_shot, first, second = ledger.rounds()
    assert (one_shot.kind, one_shot.session_round, one_shot.set_up) == ("one-shot", None, True)
    assert (first.kind, first.session_round, first.set_up) == ("set-up+round", 1, True)
    assert (second.kind, second.session_round, second.set_up) == ("session", 2, False)
    assert first.describe_kind() == "session round 1 (with its set-up)"
    assert second.describe_kind() == "session round 2"
    with _raw(path) as raw, pytest.raises(sqlite3.IntegrityError, match="cannot be changed"):
        raw.execute("UPDATE session_rounds SET round_number = 5 WHERE round_id = 3")


# ----------------------------------------------------------------- earlier versions


def _version_1(path: Path) -> None:
    """A ledger as secagg wrote it before distributed DP (schema version 1): the same
    tables, without the DP ones, and one completed round in it."""
    with Ledger(path) as ledger:
        _start(ledger, 1)
        _complete(ledger, 1)
    with _raw(path) as raw:
        raw.execute("DROP TRIGGER session_rounds_are_final")
        raw.execute("DROP TABLE session_rounds")
        raw.execute("DROP TRIGGER privacy_records_are_final")
        raw.execute("DROP TABLE dp_rounds")
        raw.execute("UPDATE schema_version SET version = 1")


def test_a_version_1_ledger_is_read_as_it_is_and_upgraded_whole_by_the_writer(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.db"
    _version_1(path)
    before = path.read_bytes()
    with Ledger.open_readonly(path) as reader:  # a reader changes nothing
        assert reader.schema_version == 1
        (old,) = reader.rounds()
        assert old.outcome is RoundOutcome.COMPLETED and old.privacy is None
        assert reader.dp_inputs(bytes(32)) == []
    assert path.read_bytes() == before
    with Ledger(path) as writer:  # the writer upgrades, keeping every round as it was
        assert writer.schema_version == SCHEMA_VERSION
        assert writer.rounds() == [old]
        np.testing.assert_array_equal(writer.aggregate(1), _aggregate(1))
        _complete_dp(writer, 2, _plan(), COHORT)
    with _raw(path) as raw:
        assert raw.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    with Ledger.open_readonly(path) as reader:
        assert [r.privacy is not None for r in reader.rounds()] == [False, True]


def _version_2(path: Path) -> None:
    """A ledger as secagg wrote it before sessions (schema version 2): one completed round."""
    with Ledger(path) as ledger:
        _complete_dp(ledger, 1, _plan(), COHORT)
    with _raw(path) as raw:
        raw.execute("DROP TRIGGER session_rounds_are_final")
        raw.execute("DROP TABLE session_rounds")
        raw.execute("UPDATE schema_version SET version = 2")


def test_a_version_2_ledger_reads_every_round_as_one_shot_and_is_upgraded_whole(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.db"
    _version_2(path)
    before = path.read_bytes()
    with Ledger.open_readonly(path) as reader:
        assert reader.schema_version == 2
        (old,) = reader.rounds()
        assert old.kind == "one-shot" and old.session_round is None and old.privacy is not None
    assert path.read_bytes() == before
    with Ledger(path) as writer:
        assert writer.schema_version == SCHEMA_VERSION
        assert writer.rounds() == [old]
        _start(writer, 2, session_round=1)
        assert writer.round(2).session_round == 1
    with _raw(path) as raw:
        assert raw.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
