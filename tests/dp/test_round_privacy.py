"""The server's privacy accounting: a round's privacy record."""

from __future__ import annotations

import pytest

from secagg.dp.round_privacy import RoundPrivacy
from secagg.errors import UsageError


def test_a_privacy_record_that_spends_less_than_its_own_round_is_refused() -> None:
    with pytest.raises(UsageError, match="below the round's"):
        RoundPrivacy(bytes(32), "skellam", 1e-5, 2.0, 1.0, 8.0, 4)
    with pytest.raises(UsageError, match="delta"):
        RoundPrivacy(bytes(32), "skellam", 1.5, 1.0, 1.0, 8.0, 4)
