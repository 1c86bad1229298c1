"""The cohort reads a stage's deliveries only as it sends them, a bounded chunk at a time."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Mapping

import pytest

from secagg import cohort
from secagg.cohort import Cohort, Reply


class EchoGroup:
    """Clients that answer each delivery with its own bytes (the cohort's plumbing only)."""

    def answer(self, deliveries: Iterable[tuple[int, bytes]]) -> Iterator[Reply]:
        for i, data in deliveries:
            yield (i, data, None)


class CountingDeliveries(Mapping[int, bytes]):
    """Deliveries encoded on access, as the simulator's are; counts how many were read."""

    def __init__(self, n: int, size: int = 100) -> None:
        self.n, self.size, self.reads = n, size, 0

    def __getitem__(self, i: int) -> bytes:
        self.reads += 1
        return i.to_bytes(4, "big") * (self.size // 4)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.n))

    def __len__(self) -> int:
        return self.n


@pytest.mark.parametrize("workers", [1, 2])
def test_every_delivery_is_answered_once_and_read_once(workers: int) -> None:
    deliveries = CountingDeliveries(50)
    with Cohort(lambda ids: EchoGroup(), list(range(50)), workers) as group:  # type: ignore[arg-type,return-value]
        replies = list(group.answer(deliveries))
    assert sorted(i for i, _, _ in replies) == list(range(50))
    assert all(data == deliveries[i] for i, data, _ in replies)
    assert deliveries.reads == 50 + 50  # once by the cohort, once by this check


def test_a_worker_is_sent_one_chunk_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # A chunk of one delivery: the cohort may be ahead of the replies by one per worker, never
    # by the whole stage (a broadcast of O(n) bytes to n clients would not fit in memory).
    monkeypatch.setattr(cohort, "DELIVERY_CHUNK_BYTES", 1)
    deliveries = CountingDeliveries(40)
    with Cohort(lambda ids: EchoGroup(), list(range(40)), 2) as group:  # type: ignore[arg-type,return-value]
        for answered, _ in enumerate(group.answer(deliveries), 1):
            assert deliveries.reads <= answered + 2
    assert deliveries.reads == 40


def test_in_process_clients_read_each_delivery_only_when_they_answer_it() -> None:
    deliveries = CountingDeliveries(30)
    with Cohort(lambda ids: EchoGroup(), list(range(30)), 1) as group:  # type: ignore[arg-type,return-value]
        for answered, _ in enumerate(group.answer(deliveries), 1):
            assert deliveries.reads == answered


class SharedListDeliveries(CountingDeliveries):
    """Deliveries in parts, as the simulator's are: a short head of their own, then one
    large list that every delivery holds as the same object."""

    def __init__(self, n: int, shared: int = 1 << 16) -> None:
        super().__init__(n)
        self.shared = bytes(range(256)) * (shared // 256)

    def __getitem__(self, i: int) -> tuple[bytes, ...]:  # type: ignore[override]
        self.reads += 1
        return (i.to_bytes(4, "big"), self.shared)


def test_a_part_that_deliveries_share_is_counted_once_a_chunk() -> None:
    deliveries = SharedListDeliveries(50)
    pending = deque(range(50))
    # Room for the list and a dozen heads: without sharing, one delivery would fill it.
    chunk = cohort.take_chunk(pending, deliveries, len(deliveries.shared) + 4 * 12)
    assert len(chunk) == 12 and len(pending) == 38
    assert all(parts[1] is deliveries.shared for _, parts in chunk)


@pytest.mark.parametrize("workers", [1, 2])
def test_deliveries_in_parts_reach_each_client_as_the_joined_bytes(
    workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cohort, "REPLY_BATCH", 3)  # several batches of replies a chunk
    deliveries = SharedListDeliveries(40)
    with Cohort(lambda ids: EchoGroup(), list(range(40)), workers) as group:  # type: ignore[arg-type,return-value]
        replies = list(group.answer(deliveries))
    assert sorted(i for i, _, _ in replies) == list(range(40))
    assert all(data == i.to_bytes(4, "big") + deliveries.shared for i, data, _ in replies)
    assert all(cohort.delivery_size(deliveries[i]) == 4 + (1 << 16) for i in range(40))
