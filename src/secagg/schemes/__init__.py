"""Schemes: what a round computes, behind one interface the round engine drives.

A scheme supplies a round configuration, a server state machine and a client state machine of
the same shape (``secagg.protocol.runner.RoundServer`` / ``RoundClient``), and the client's
policy (what configuration it accepts); its settings say what a deployment fixes for it
(``base``: ``Scheme``, ``SchemeSettings``, ``RoundOpening``). ``registry`` lists the schemes
and what the rest of the house needs to know of each. Three implementations:

- ``plaintext``: every client sends its update as float32; the baseline, in process only
  (the service has no plaintext path);
- ``masking``: SecAgg and SecAgg+, semi-honest or active, a package of its own (its messages,
  client and server state machines, derivations, graph, encoding, parameters and policy);
- ``ckks``: CKKS homomorphic encryption (TenSEAL, the ``[he]`` extra), a package of its own
  (messages, client, server, scheme, settings): clients encrypt, the server adds
  ciphertexts, a key holder decrypts the sum.

Layers (``tests/test_layers.py``, docs/ARCHITECTURE.md): ``hazmat`` <- ``protocol`` <-
``dp`` <- ``schemes`` <- ``simulate`` / ``client_session`` <- ``service`` <- ``cli``.
"""

from __future__ import annotations

from secagg.schemes.base import Scheme
from secagg.schemes.registry import SchemeKind

__all__ = ["Scheme", "SchemeKind"]
