"""What every edit kind needs to know about a denoiser's weights: the model fingerprint.

An edit records which model it was made for as a fingerprint of the
weights it changes, not as a path, so the same edit file is recognised on
any machine and in any copy of the model. Masks (:mod:`fia.mask`) and
weight deltas (:mod:`fia.delta`) compute it the same way, here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import torch
from torch import Tensor


def fingerprint_weights(
    weights: Mapping[str, Tensor], zeroed: Mapping[str, Tensor] | None = None
) -> str:
    """sha256 over ``name``, ``shape`` and the float16-rounded values of each weight.

    Rounding to float16 makes a float32 and a float16 copy of the same model
    match. ``zeroed`` (layer -> flat indices) sets those entries to zero
    first. Layers are hashed in name order.
    """
    h = hashlib.sha256()
    for name in sorted(weights):
        w = weights[name].detach()
        h.update(name.encode())
        h.update(json.dumps(list(w.shape)).encode())
        w16 = w.to(device="cpu", dtype=torch.float16).contiguous().reshape(-1)
        if zeroed is not None and name in zeroed and zeroed[name].numel():
            w16 = w16.clone()
            w16[zeroed[name].long()] = 0
        h.update(w16.view(torch.int16).numpy().tobytes())
    return h.hexdigest()
