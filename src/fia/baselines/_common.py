"""What the baselines need from a pipeline: text embeddings and its device.

Checks, layer discovery and progress live in their own modules
(:func:`fia.concepts.parse_concepts`, :mod:`fia.config`'s ``check_*``,
:func:`fia.targets.find_targets`, :mod:`fia.progress`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch



def text_embeddings(pipe: Any, texts: Sequence[str]) -> torch.Tensor:
    """What the UNet receives as ``encoder_hidden_states`` for each text, (n, L, d).

    Uses the pipeline's own ``encode_prompt`` (so clip-skip, SD XL's two
    encoders etc. are honoured), without classifier-free guidance.
    """
    with torch.no_grad():
        out = pipe.encode_prompt(
            prompt=list(texts),
            device=execution_device(pipe),
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
        )
    return out[0]


def execution_device(pipe: Any) -> torch.device:
    return pipe._execution_device if hasattr(pipe, "_execution_device") else pipe.device
