"""A setting is declared once, on its field: the deployment file's reader and writer, the
names an error uses and the settings reference all come from the declaration."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from secagg.dp.mechanism import Mechanism
from secagg.dp.settings import DpSettings, dp_file_names, dp_flag_names, name_knobs
from secagg.errors import ConfigurationError
from secagg.knobs import file_names, knob, read_section, section_lines, settings_of
from secagg.service.settings import CoordinatorSettings


@dataclass(frozen=True)
class Sample:
    size: int = knob(section="s", flag="--size", help="How many.", default=3)
    rate: float | None = knob(section="s", key="speed", help="How fast.", default=None)
    mode: Mechanism = knob(section="s", help="Which.", default=Mechanism.SKELLAM)
    not_a_knob: int = 0


def _load(text_lines: list[str]) -> dict[str, object]:
    import tomllib

    return tomllib.loads("\n".join(["[s]", *text_lines]))


def test_the_declarations_are_the_fields_with_a_knob_in_order() -> None:
    found = settings_of(Sample)
    assert [(s.name, s.key, s.where, s.kind, s.optional) for s in found] == [
        ("size", "size", "s.size", int, False),
        ("rate", "speed", "s.speed", float, True),
        ("mode", "mode", "s.mode", str, False),
    ]
    assert found[2].enum is Mechanism


def test_what_the_writer_writes_the_reader_reads_back() -> None:
    sample = Sample(size=5, rate=2, mode=Mechanism.DISCRETE_GAUSSIAN)
    lines = section_lines(sample, "s")
    assert lines == ["size = 5", "speed = 2", 'mode = "discrete-gaussian"']
    read = read_section(_load(lines), "s", settings_of(Sample), "f.toml")
    assert Sample(**read) == Sample(size=5, rate=2.0, mode=Mechanism.DISCRETE_GAUSSIAN)
    assert section_lines(Sample(), "s") == ["size = 3", 'mode = "skellam"']  # None: left out


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("colour = 1", "f.toml: unknown key s.colour"),
        ('size = "3"', "f.toml: s.size must be an integer"),
        ("size = true", "f.toml: s.size must be an integer"),
        ('speed = "fast"', "f.toml: s.speed must be a number"),
        (
            'mode = "uniform"',
            'f.toml: s.mode must be one of "skellam", "discrete-gaussian"; got \'uniform\'',
        ),
    ],
)
def test_a_bad_key_is_one_line_naming_it(line: str, error: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        read_section(_load([line]), "s", settings_of(Sample), "f.toml")
    assert str(caught.value) == error


def test_an_error_names_a_knob_as_the_file_or_the_command_line_sets_it() -> None:
    assert file_names(Sample) == {"size": "s.size", "rate": "s.speed", "mode": "s.mode"}
    assert dp_file_names()["target_epsilon"] == "dp.epsilon"
    assert dp_flag_names()["target_epsilon"] == "--dp-epsilon"
    assert dp_flag_names()["min_clients"] == "--min-cohort"
    message = "bits must be in 4..62 for target_epsilon at min_clients"
    assert name_knobs(message, dp_flag_names()) == (
        "--dp-bits must be in 4..62 for --dp-epsilon at --min-cohort"
    )
    assert name_knobs("value_bits and 20-bit", dp_flag_names()) == "value_bits and 20-bit"


def test_every_dp_and_coordinator_knob_has_a_flag_or_says_why_not() -> None:
    dp = {s.name: s.knob.flag for s in settings_of(DpSettings)}
    assert all(flag is not None and flag.startswith("--dp-") for flag in dp.values())
    coordinator = {s.name: s.knob.flag for s in settings_of(CoordinatorSettings)}
    # The listening address and the flow-control window are the deployment file's alone, and
    # so are a session's caps: every client reads them from the same file as its own.
    assert {n for n, flag in coordinator.items() if flag is None} == {
        "host",
        "upload_window",
        "session_rounds",
        "session_seconds",
    }


def test_a_knob_of_a_type_a_file_cannot_hold_is_refused_when_read() -> None:
    @dataclass(frozen=True)
    class Odd:
        where: complex = knob(section="s", help="?", default=0j)

    with pytest.raises(TypeError, match="has no TOML form"):
        settings_of(Odd)
