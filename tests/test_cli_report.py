"""What the command line shows and writes: one-line errors, the rounds table, the export."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from rich.console import Console

from secagg.cli.output import print_error
from secagg.cli.report import export_aggregate, format_rounds_table
from secagg.errors import ConfigurationError, UsageError, one_line
from secagg.ledger import Ledger
from tests.ledger.helpers import _as_unprivileged

DIM = 6


@pytest.fixture
def ledger() -> Iterator[Ledger]:
    with Ledger(":memory:") as opened:
        yield opened


def _start(ledger: Ledger, round_id: int) -> None:
    ledger.start_round(
        round_id=round_id,
        session_id=bytes(32),
        task_hash=bytes(32),
        protocol="secagg+",
        cohort=(3, 5, 8, 13, 21),
        degree=4,
        threshold=3,
        dim=DIM,
    )


def _aggregate(round_id: int) -> NDArray[np.float64]:
    return np.arange(1, DIM + 1, dtype=np.float64) / 3.0 + round_id / 7.0


def _complete(ledger: Ledger, round_id: int) -> None:
    ledger.complete_round(
        round_id,
        included=(3, 8, 13, 21),
        aggregate=_aggregate(round_id),
        total_weight=40,
        upload_bytes_per_client=1234.5,
        download_bytes_per_client=678.0,
    )


# ----------------------------------------------------------------- errors


def test_an_error_is_one_line_on_stderr_whatever_its_length_and_brackets() -> None:
    stream = io.StringIO()
    message = "the deployment has no [tls] section; " + "x" * 200 + " [round] [/] [bold]"
    print_error(message + "\nsecond line", stream=stream)
    text = stream.getvalue()
    assert text.count("\n") == 1  # one line, not wrapped at 80 columns off a terminal
    assert text == f"error: {message} second line\n"  # no markup swallowed


def test_one_line_turns_control_characters_and_newlines_into_single_spaces() -> None:
    assert one_line("a\nb\t\x1b[31mc  d\r\n") == "a b [31mc d"


# ----------------------------------------------------------------- the rounds table


def test_the_rounds_table_shows_outcome_drops_by_stage_seconds_and_reason(ledger: Ledger) -> None:
    _start(ledger, 1)
    ledger.record_stage(1, "advertise", 0.25)
    ledger.record_stage(1, "share", 0.5)
    ledger.record_drop(1, 21, "share", "missed-share")
    ledger.record_drop(1, 5, "share", "bad-share")
    ledger.record_stage(1, "unmask", 0.75)
    ledger.record_drop(1, 13, "unmask", "missed-unmask")
    _complete(ledger, 1)
    _start(ledger, 2)
    ledger.abort_round(2, "2 clients left [masked-input], threshold 3")
    _start(ledger, 3)
    console = Console(record=True, width=160, file=io.StringIO())
    console.print(format_rounds_table(ledger.rounds()))
    text = console.export_text()
    header = next(line for line in text.splitlines() if "outcome" in line)
    columns = ("round", "outcome", "cohort size", "included", "dropped", "seconds", "up B/client")
    for column in (*columns, "reason"):
        assert column in header
    rows: dict[str, str] = {}
    for line in text.splitlines():
        cells = line.split()  # "│ 1 │ completed │ ...": the round id is the second cell
        if len(cells) > 1 and cells[1].isdigit():
            rows[cells[1]] = line
    assert "completed" in rows["1"]
    assert "share 2, unmask 1" in rows["1"]
    assert "1.50" in rows["1"]
    assert "1,234" in rows["1"]  # up B/client, whole bytes
    # The reason is shown as written, brackets included (never read as markup).
    assert "aborted" in rows["2"] and "2 clients left [masked-input], threshold 3" in rows["2"]
    assert "running" in rows["3"]


# ----------------------------------------------------------------- exports


def test_export_writes_the_aggregate_as_float32_npy(ledger: Ledger, tmp_path: Path) -> None:
    _start(ledger, 1)
    _complete(ledger, 1)
    out = tmp_path / "mean"  # no suffix: the file is written at exactly this path
    export_aggregate(ledger, 1, out)
    loaded = np.load(out)
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, _aggregate(1).astype(np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["mean"]  # no temporary file left behind


def test_export_of_a_round_without_aggregate_is_a_usage_error(
    ledger: Ledger, tmp_path: Path
) -> None:
    _start(ledger, 1)
    with pytest.raises(UsageError):
        export_aggregate(ledger, 1, tmp_path / "out.npy")
    assert list(tmp_path.iterdir()) == []


def test_export_into_a_missing_directory_or_onto_a_directory_is_one_line_and_leaves_nothing(
    ledger: Ledger, tmp_path: Path
) -> None:
    _start(ledger, 1)
    _complete(ledger, 1)
    nowhere = tmp_path / "no-such-dir" / "mean.npy"
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    a_file = tmp_path / "a-file"
    a_file.write_bytes(b"x")
    for target, words in (
        (nowhere, "does not exist"),
        (occupied, "is a directory"),
        (a_file / "mean.npy", "is not a directory"),
    ):
        with pytest.raises(ConfigurationError, match=words) as failed:
            export_aggregate(ledger, 1, target)
        assert "\n" not in str(failed.value) and str(target) in str(failed.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "occupied"]
    assert list(occupied.iterdir()) == []


def test_export_into_an_unwritable_directory_is_one_line_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as ledger:
        _start(ledger, 1)
        _complete(ledger, 1)
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    shelf.chmod(0o555)
    try:
        results = _as_unprivileged(
            """
            from secagg.cli.report import export_aggregate
            ledger, shelf = map(Path, sys.argv[1:])
            with Ledger.open_readonly(ledger) as reader:
                attempt("export", lambda: export_aggregate(reader, 1, shelf / "mean.npy"))
            """,
            path,
            shelf,
        )
    finally:
        shelf.chmod(0o755)
    outcome, message = results["export"]
    assert outcome == "ConfigurationError"
    assert str(shelf / "mean.npy") in message and "no permission" in message
    assert list(shelf.iterdir()) == []


def test_a_ledger_with_sessions_shows_each_rounds_kind(ledger: Ledger) -> None:
    """Rounds of a session that spans rounds say so (round 1 ran the set-up); a ledger of
    one-shot rounds only has no kind column at all."""
    for round_id, session_round in ((1, None), (2, 1), (3, 2)):
        ledger.start_round(
            round_id=round_id,
            session_id=bytes(32),
            task_hash=bytes(32),
            protocol="secagg+",
            cohort=(3, 5, 8, 13, 21),
            degree=4,
            threshold=3,
            dim=DIM,
            session_round=session_round,
        )
        _complete(ledger, round_id)
    console = Console(record=True, width=200, file=io.StringIO())
    console.print(format_rounds_table(ledger.rounds()))
    text = console.export_text()
    assert "kind" in next(line for line in text.splitlines() if "outcome" in line)
    assert "one-shot" in text
    assert "session round 1 (with its set-up)" in text
    assert "session round 2" in text
