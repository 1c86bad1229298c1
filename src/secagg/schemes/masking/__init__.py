"""Masking: SecAgg and SecAgg+ (Bonawitz et al. 2017, Bell et al. 2020), semi-honest or active.

The whole scheme, in one wing beside ``ckks`` and ``plaintext``:

- ``scheme``: ``MaskingScheme``, masking behind the interface the round engine drives;
- ``messages``: its messages (each with its tag, direction and stage);
- ``client`` and ``server``: its sans-I/O state machines;
- ``derivations``: the session id and every key, nonce and seed derived from it;
- ``graph``: the SecAgg+ neighbour graph, its parameters and the survivor rule;
- ``encoding``: how an update becomes a ring vector (DP's is ``secagg.dp.encoding``);
- ``parameters``: a deployment's parameters (``Params``), checked so none can overflow;
- ``policy``: what a client accepts, checked against every round configuration.
"""

from __future__ import annotations

from secagg.schemes.masking.scheme import MaskingScheme

__all__ = ["MaskingScheme"]
