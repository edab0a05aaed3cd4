"""FIA ablations: the FIA engine with one stage changed, and a random control.

Every variant reuses the engine's own pieces, with no new math:
sensitivity ``A`` from :func:`fia.collect.concept_sensitivity` (Eq. 1-3,
sharing :func:`fia.erase.erase`'s per-concept cache), selection from
:mod:`fia.core.select` (Eq. 4-6) and fusion from :mod:`fia.core.fuse`
(Eq. 7-8). The variants (``VARIANTS``) are:

- ``fia``: the full method (delegates to :func:`fia.erase.erase`);
- ``fia-union``: naive union fusion, no concept-agnostic retention: every
  neuron selected by at least one concept is pruned (``s >= 1``);
- ``fia-wanda``: the ``wanda`` saliency ``|W_ij| * ||X_j||`` on token rows
  scaled to unit length (the reference code's reduction) instead of Eq. 1's
  energy saliency (``FIAConfig.saliency``);
- ``fia-channel``: channel-level selection only (Eq. 4, no Eq. 5);
- ``fia-layer``: layer-level selection only (Eq. 5, no Eq. 4).

An entry with ``A == 0`` is never selected, in every variant (as in Eq. 6).

:func:`random_mask_like` draws, for each layer, a uniformly random set of
weights with exactly the per-layer count of a given mask (e.g. a FIA
``ConceptMask``); :func:`random_edit` applies one. Pruning it tells how much
of FIA's effect comes from *which* weights it picks rather than from how
many it removes per layer.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from fia.baselines import _common
from fia.baselines._common import Progress
from fia.config import FIAConfig
from fia.errors import FIAError

SELECTIONS = ("both", "channel", "layer")
FUSIONS = ("fia", "union")


@dataclass
class FIAAblationConfig:
    """One FIA variant.

    Attributes:
        fia: the engine's settings (saliency kind, r1, r2, alpha, prompts...).
        selection: ``both`` (Eq. 6: channel & layer), ``channel`` (Eq. 4 only)
            or ``layer`` (Eq. 5 only).
        fusion: ``fia`` (Eq. 7-8) or ``union`` (prune every selected neuron).
        cache_dir: per-concept sensitivity cache shared with :func:`fia.erase.erase`.
    """

    fia: FIAConfig = field(default_factory=FIAConfig)
    selection: Literal["both", "channel", "layer"] = "both"
    fusion: Literal["fia", "union"] = "fia"
    cache_dir: str | None = None

    def validate(self) -> FIAAblationConfig:
        if not isinstance(self.fia, FIAConfig):
            raise FIAError(f"fia must be a FIAConfig, got {type(self.fia).__name__}")
        self.fia.validate()
        if self.selection not in SELECTIONS:
            raise FIAError(f"unknown selection {self.selection!r}; use one of: {', '.join(SELECTIONS)}")
        if self.fusion not in FUSIONS:
            raise FIAError(f"unknown fusion {self.fusion!r}; use one of: {', '.join(FUSIONS)}")
        return self

    @property
    def is_full_method(self) -> bool:
        return self.selection == "both" and self.fusion == "fia"

    def replace(self, **changes: Any) -> FIAAblationConfig:
        return replace(self, **changes).validate()

    def to_dict(self) -> dict[str, Any]:
        return {"fia": self.fia.to_dict(), "selection": self.selection, "fusion": self.fusion}


VARIANTS: dict[str, Callable[[], FIAAblationConfig]] = {
    "fia": lambda: FIAAblationConfig(),
    "fia-union": lambda: FIAAblationConfig(fusion="union"),
    "fia-wanda": lambda: FIAAblationConfig(fia=FIAConfig(saliency="wanda")),
    "fia-channel": lambda: FIAAblationConfig(selection="channel"),
    "fia-layer": lambda: FIAAblationConfig(selection="layer"),
}


# ------------------------------------------------------------------ pure steps
def select(a: Tensor, r2: float, selection: str) -> Tensor:
    """Eq. 4-6 with one level possibly dropped: bool mask shaped like ``a``."""
    from fia.core.select import channel_top_k, layer_top_k, select_concept_neurons

    a = a.float()
    if selection == "both":
        return select_concept_neurons(a, r2)
    if selection == "channel":
        return channel_top_k(a, r2) & (a > 0)
    if selection == "layer":
        return layer_top_k(a, r2) & (a > 0)
    raise FIAError(f"unknown selection {selection!r}; use one of: {', '.join(SELECTIONS)}")


def fuse(masks: Sequence[Tensor], alpha: float, fusion: str) -> tuple[Tensor, int, int]:
    """(prune mask, concept-agnostic count, threshold) of one layer's concept masks."""
    from fia.core.fuse import fuse_masks

    if fusion == "fia":
        fused = fuse_masks(list(masks), alpha)
        return fused.prune, int(fused.agnostic.sum()), int(fused.tau_ca)
    if fusion == "union":
        prune = torch.zeros_like(masks[0])
        for m in masks:
            prune |= m
        return prune, 0, 1
    raise FIAError(f"unknown fusion {fusion!r}; use one of: {', '.join(FUSIONS)}")


# ------------------------------------------------------------------ engine runs
def _erase_progress(progress: Progress | None):
    if progress is None:
        return None

    def emit(event: str, **info: Any) -> None:
        if event == "concept_start":
            progress(info["index"], info["total"], f"FIA: {info['concept']!r}")
        elif event == "concept_done":
            progress(info["index"] + 1, info["total"], f"FIA: {info['concept']!r} done")

    return emit


def ablation_mask(
    pipe: Any,
    concepts: Sequence[str],
    config: FIAAblationConfig | None = None,
    *,
    prompts: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
):
    """The :class:`fia.mask.ConceptMask` of one variant (the model is not changed)."""
    import importlib

    collect = importlib.import_module("fia.collect")
    erase_mod = importlib.import_module("fia.erase")  # the module (``fia.erase`` is also a function)
    from fia.mask import ConceptMask, denoiser, fingerprint_weights
    from fia.prompts import build_prompts, concept_value
    from fia.targets import find_targets

    config = (config or FIAAblationConfig()).validate()
    names = _common.check_concepts(concepts)
    fia_cfg = config.fia
    if config.is_full_method:
        return erase_mod.erase(
            pipe, names, fia_cfg, cache_dir=config.cache_dir, prompts=dict(prompts or {}) or None,
            progress=_erase_progress(progress),
        )  # fmt: skip
    found = find_targets(denoiser(pipe), fia_cfg.targets)
    weights = {t.name: t.module.weight for t in found}
    layers = {name: (int(w.shape[0]), int(w.shape[1])) for name, w in weights.items()}
    dtype = next(iter(weights.values())).dtype
    fingerprint = fingerprint_weights(weights)
    cache = Path(config.cache_dir) if config.cache_dir is not None else None
    selected: dict[str, dict[str, Tensor]] = {}
    for i, c in enumerate(names):
        _common.report(progress, i, len(names), f"FIA ablation: {c!r}")
        cp = (prompts or {}).get(c) or build_prompts(c, fia_cfg)
        r2 = concept_value(fia_cfg.r2_overrides, c, fia_cfg.r2)
        settings = erase_mod.concept_cache_key(
            pipe, c, cp, fia_cfg, layers=layers, model_fingerprint=fingerprint, dtype=dtype
        )
        r1 = settings["r1"]
        path = erase_mod.cache_path(cache, c, settings) if cache is not None else None
        sens = erase_mod.load_sensitivity(path, settings) if path is not None else None
        if sens is None:
            sens = collect.concept_sensitivity(
                pipe, list(cp.concept_prompts), list(cp.base_prompts), list(cp.concept_seeds),
                list(cp.base_seeds), fia_cfg, found, r1=r1,
            )  # fmt: skip
            if path is not None:
                erase_mod.save_sensitivity(path, {n: sens[n] for n in layers}, settings)
        selected[c] = {n: select(sens[n].cpu(), r2, config.selection) for n in layers}
        del sens
    prune, agnostic, tau, counts = {}, {}, {}, {}
    for name in layers:
        prune[name], agnostic[name], tau[name] = fuse([selected[c][name] for c in names], fia_cfg.alpha, config.fusion)
        counts[name] = {c: int(selected[c][name].sum()) for c in names}
    mask = ConceptMask.from_prune_masks(
        weights,
        prune,
        concepts=names,
        config={**fia_cfg.to_dict(), "ablation": {"selection": config.selection, "fusion": config.fusion}},
        target_kind=fia_cfg.targets,
        agnostic=agnostic,
        tau_ca=tau,
        selected=counts,
        fingerprint=fingerprint,
    )
    _common.report(progress, len(names), len(names), "FIA ablation: fused")
    return mask


def edit(
    pipe: Any,
    concepts: Sequence[str],
    config: FIAAblationConfig | None = None,
    *,
    preserve: Sequence[str] = (),
    progress: Progress | None = None,
    prompts: Mapping[str, Any] | None = None,
):
    """Compute a variant's mask and prune ``pipe`` with it, in place; returns the mask.

    ``preserve`` is ignored (FIA keeps general neurons through fusion, not
    through named concepts). ``prompts`` maps a concept to its
    :class:`fia.prompts.ConceptPrompts`.
    """
    mask = ablation_mask(pipe, concepts, config, prompts=prompts, progress=progress)
    mask.apply_(pipe)
    return mask


def _variant_edit(name: str):
    def run(pipe, concepts, config=None, *, preserve=(), progress=None, prompts=None):
        return edit(pipe, concepts, config or VARIANTS[name](), preserve=preserve, progress=progress, prompts=prompts)

    run.__name__ = f"edit_{name.replace('-', '_')}"
    run.__doc__ = f"``{name}``: :func:`edit` with ``VARIANTS[{name!r}]()`` as the default config."
    return run


VARIANT_EDITS: dict[str, Callable[..., Any]] = {name: _variant_edit(name) for name in VARIANTS}


# -------------------------------------------------------------- random control
def _layer_seed(seed: int, name: str) -> int:
    # independent of the other layers and of dict order: adding a layer
    # changes no other layer's draw
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode("utf-8"))) % (2**63 - 1)


def random_mask_like(
    per_layer_counts: Mapping[str, int],
    shapes: Mapping[str, tuple[int, ...]],
    seed: int,
) -> dict[str, Tensor]:
    """A bool mask per layer with exactly ``per_layer_counts[name]`` True entries, uniformly placed.

    Args:
        per_layer_counts: layer name -> number of weights to select.
        shapes: layer name -> weight shape; must name the same layers.
        seed: the draw is a pure function of ``(seed, name, count, shape)``.
    """
    missing = sorted(set(per_layer_counts) ^ set(shapes))
    if missing:
        raise FIAError(f"counts and shapes must name the same layers; they differ on {missing}")
    out: dict[str, Tensor] = {}
    for name, count in per_layer_counts.items():
        shape = tuple(int(s) for s in shapes[name])
        numel = 1
        for s in shape:
            numel *= s
        if isinstance(count, bool) or not isinstance(count, int) or not (0 <= count <= numel):
            raise FIAError(f"layer {name!r}: count must be an integer in [0, {numel}], got {count!r}")
        gen = torch.Generator().manual_seed(_layer_seed(seed, name))
        flat = torch.zeros(numel, dtype=torch.bool)
        flat[torch.randperm(numel, generator=gen)[:count]] = True
        out[name] = flat.reshape(shape)
    return out


def counts_of(masks: Mapping[str, Tensor]) -> tuple[dict[str, int], dict[str, tuple[int, ...]]]:
    """(per-layer True counts, per-layer shapes) of a mask dict, the inputs of :func:`random_mask_like`."""
    return (
        {name: int(m.sum()) for name, m in masks.items()},
        {name: tuple(m.shape) for name, m in masks.items()},
    )


def random_edit(pipe: Any, like: Any, seed: int = 0):
    """Prune ``pipe`` with a random mask having ``like``'s per-layer counts; returns that mask.

    ``like`` is a :class:`fia.mask.ConceptMask` (made for this model) or a
    dict {layer name: bool tensor}.
    """
    from fia.mask import ConceptMask, denoiser

    model = denoiser(pipe)
    if isinstance(like, ConceptMask):
        counts = {lm.name: lm.pruned for lm in like.layers}
        shapes = {lm.name: tuple(lm.shape) for lm in like.layers}
        concepts, cfg, kind = list(like.concepts), dict(like.config), like.target_kind
    else:
        counts, shapes = counts_of(like)
        concepts, cfg, kind = [], {}, "ffn2"
    params = dict(model.named_parameters())
    weights = {}
    for name in counts:
        w = params.get(f"{name}.weight")
        if w is None or tuple(w.shape) != tuple(shapes[name]):
            raise FIAError(f"layer {name!r} of the mask is not in this model (or has another shape)")
        weights[name] = w
    masks = random_mask_like(counts, shapes, seed)
    mask = ConceptMask.from_prune_masks(
        weights, masks, concepts=concepts, config={**cfg, "ablation": {"random_seed": int(seed)}}, target_kind=kind
    )
    mask.apply_(pipe)
    return mask
