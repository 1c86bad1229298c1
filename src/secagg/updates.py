"""What a client contributes to a round: the callback that trains and returns its update.

Every transport that runs a client's training takes one (``secagg join``'s
``SecAggClient``, the demo, the load benchmark), and every task makes one (``secagg.fl``'s
digits tasks, ``secagg.service.tasks``' synthetic one). It lives here, below both, so that
the training code never imports the service it is run by (``tests/test_layers.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

__all__ = ["UpdateFn"]

UpdateFn = Callable[[NDArray[np.float32], int], tuple[NDArray[np.floating], int]]
"""The update callback: ``update(model, step) -> (values, weight)``.

``model`` is the global model the round trains (a flat float32 vector of the deployment's
``dim``, already checked against the round's session); ``step`` is the training round. Return
the update to aggregate (``dim`` finite values; they are clipped to the deployment's
``[-clip, clip]``) and an integer weight in ``[0, max_weight]`` (at least 1 under CKKS, which
divides by the decrypted total weight; e.g. the number of local examples: the coordinator
learns the weighted mean). The callback runs in a worker thread and may take as long as local
training takes; if it raises, this client sits the round out.
"""
