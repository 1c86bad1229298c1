"""The ledger's rows: what is stored but is not what was written is a typed error naming
the round."""

from __future__ import annotations

from pathlib import Path

import pytest

from secagg.errors import DecodeError
from secagg.ledger import Ledger
from tests.ledger.helpers import COHORT, _complete, _complete_dp, _plan, _raw, _start


def test_a_corrupted_aggregate_blob_is_a_decode_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as ledger:
        _start(ledger, 1)
        _complete(ledger, 1)
        _start(ledger, 2)
        _complete(ledger, 2)
    with _raw(path) as raw:
        raw.execute("UPDATE aggregates SET data = ? WHERE round_id = 1", (b"\x00" * 13,))
        # Same length, one bit flipped: caught by the digest.
        (data,) = raw.execute("SELECT data FROM aggregates WHERE round_id = 2").fetchone()
        flipped = bytes([data[0] ^ 1]) + data[1:]
        raw.execute("UPDATE aggregates SET data = ? WHERE round_id = 2", (flipped,))
    with Ledger(path) as ledger:
        with pytest.raises(DecodeError, match="13 bytes"):
            ledger.aggregate(1)
        with pytest.raises(DecodeError, match="digest"):
            ledger.aggregate(2)


@pytest.mark.parametrize(
    ("column", "value"), [("outcome", "bogus"), ("session_id", b"short"), ("task_hash", 7)]
)
def test_a_corrupt_row_is_a_decode_error_naming_the_round(
    tmp_path: Path, column: str, value: object
) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as ledger:
        _start(ledger, 1)
    with _raw(path) as raw:
        raw.execute("PRAGMA ignore_check_constraints = ON")  # what a damaged page looks like
        raw.execute(f"UPDATE rounds SET {column} = ? WHERE round_id = 1", (value,))
    with (
        Ledger.open_readonly(path) as reader,
        pytest.raises(DecodeError, match="round 1 in the ledger is corrupt"),
    ):
        reader.rounds()


def test_a_corrupt_privacy_record_is_a_decode_error_naming_the_round(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as ledger:
        _complete_dp(ledger, 1, _plan(), COHORT)
    with _raw(path) as raw:
        # What a damaged page looks like: past the CHECK constraints and the trigger.
        (trigger,) = raw.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'privacy_records_are_final'"
        ).fetchone()
        raw.execute("PRAGMA ignore_check_constraints = ON")
        raw.execute("DROP TRIGGER privacy_records_are_final")
        raw.execute("UPDATE dp_rounds SET series = ? WHERE round_id = 1", (b"short",))
        raw.execute(trigger)
    with (
        Ledger.open_readonly(path) as reader,
        pytest.raises(DecodeError, match="round 1 in the ledger is corrupt"),
    ):
        reader.rounds()
