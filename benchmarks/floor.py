"""The hardware floor of mask expansion, measured in the same run as what it judges.

The floor is the simplest code that does the unavoidable work: AES-128-CTR keystream written
into one cache-sized preallocated buffer, added in place into the accumulator, chunk by
chunk. It shares no code with secagg, so secagg's overheads cannot hide in it.
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

CHUNK_WORDS = 1 << 15  # 128 KiB of uint32 keystream per step


def fused_expand_add(acc: np.ndarray, key: bytes, scratch: np.ndarray, zeros: bytes) -> None:
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    scratch_bytes = memoryview(scratch).cast("B")
    for lo in range(0, len(acc), CHUNK_WORDS):
        hi = min(lo + CHUNK_WORDS, len(acc))
        nbytes = (hi - lo) * 4
        encryptor.update_into(zeros[:nbytes], scratch_bytes[:nbytes])
        part = acc[lo:hi]
        np.add(part, scratch[: hi - lo], out=part)


def floor_ns_per_element(elements: int = 1_000_000, masks: int = 20, repeats: int = 5) -> float:
    """Median nanoseconds per element of one fused expand-and-add on one core."""
    acc = np.zeros(elements, dtype=np.uint32)
    scratch = np.empty(CHUNK_WORDS, dtype=np.uint32)
    zeros = bytes(CHUNK_WORDS * 4)
    keys = [os.urandom(16) for _ in range(masks)]
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for key in keys:
            fused_expand_add(acc, key, scratch, zeros)
        samples.append((time.perf_counter() - t0) / (masks * elements) * 1e9)
    return statistics.median(samples)
