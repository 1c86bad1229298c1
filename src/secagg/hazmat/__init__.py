"""Cryptographic primitives. Hazardous materials: correct only when used as the protocol does.

Nothing is re-exported here, so that importing one primitive stays cheap; import the modules:

- :mod:`~secagg.hazmat.randomness` -- explicit randomness: the OS CSPRNG, or a seeded,
  forkable AES-CTR DRBG for reproducible runs.
- :mod:`~secagg.hazmat.ring` -- Z_{2^b} vector arithmetic in place, and bit packing at b bits
  per value.
- :mod:`~secagg.hazmat.keystream` -- the one AES-CTR keystream: seekable, written into
  buffers the caller owns (masks, the DRBG and the graph shuffle all read it).
- :mod:`~secagg.hazmat.prg` -- mask expansion: a 16-byte key to its keystream, added into a
  vector chunk by chunk.
- :mod:`~secagg.hazmat.kdf` -- HKDF-SHA256 with domain separation and an injective field
  encoding.
- :mod:`~secagg.hazmat.keys` -- X25519 key agreement and Ed25519 signatures.
- :mod:`~secagg.hazmat.aead` -- AES-256-GCM sealing with associated data.
- :mod:`~secagg.hazmat.shamir` -- Shamir sharing of 32-byte secrets over GF(2^256 + 297).
- :mod:`~secagg.hazmat.quantize` -- clip, scale, stochastically round and weight real vectors
  into the ring, and decode the weighted mean.
- :mod:`~secagg.hazmat.ckks` -- CKKS homomorphic encryption of updates (TenSEAL, the ``he``
  extra, imported only when used): the comparison backend's keys, encryption and sum.
"""
