"""libFuzzer harness (atheris) for ``secagg.protocol.codec.decode``: every tag of its table.

Any exception other than ``DecodeError`` is a crash, and so is a message that does not
re-encode to the very bytes it was decoded from, or that a typed decoder disagrees on.

    python tests/fuzz/fuzz_decode.py -runs=20000 [corpus_dir ...]    # bounded, as in CI
    python tests/fuzz/fuzz_decode.py -max_total_time=600 corpus/     # a longer session

``tests/protocol/test_fuzz_handlers.py`` runs it for a bounded number of iterations, seeded
with the encodings of a real active-mode round.
"""

from __future__ import annotations

import sys

import atheris

# Only our own code is instrumented: numpy and cryptography come in uninstrumented first.
import cryptography.hazmat.primitives.ciphers  # noqa: F401
import numpy  # noqa: F401

with atheris.instrument_imports(include=["secagg"]):
    from secagg.errors import DecodeError
    from secagg.protocol import codec

    # Every message of every scheme, imported here so that their decoders are instrumented.
    TYPES = [codec.message_class(tag) for tag in sorted(codec.TAGS)]


def test_one_input(data: bytes) -> None:
    try:
        message = codec.decode(data)
    except DecodeError:
        message = None
    if message is not None and message.encode() != data:
        raise AssertionError(f"{type(message).__name__} does not re-encode to its bytes")
    for cls in TYPES:
        try:
            typed = cls.decode(data)
        except DecodeError:
            if isinstance(message, cls):
                raise AssertionError(f"{cls.__name__}.decode refuses what decode took") from None
            continue
        if typed != message:
            raise AssertionError(f"{cls.__name__}.decode disagrees with decode")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
