"""CKKS homomorphic encryption (TenSEAL, the ``[he]`` extra), a wing beside masking.

- ``messages``: the round configuration, an upload, the key holders' request and answer;
- ``client`` and ``server``: the sans-I/O state machines;
- ``scheme``: ``CkksScheme``, behind the interface the round engine drives;
- ``settings``: ``CkksSettings``, what a deployment's ``[round]`` and ``[ckks]`` fix.
"""

from __future__ import annotations

from secagg.schemes.ckks.messages import CkksConfig, CkksResult, CkksSumRequest, CkksUpload
from secagg.schemes.ckks.scheme import CkksScheme, simulated_keys
from secagg.schemes.ckks.settings import CkksSettings

__all__ = [
    "CkksConfig",
    "CkksResult",
    "CkksScheme",
    "CkksSettings",
    "CkksSumRequest",
    "CkksUpload",
    "simulated_keys",
]
