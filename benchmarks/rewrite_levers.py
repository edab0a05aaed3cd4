"""Two more levers for the rewrite's kept/forgotten trade-off, measured and not offered: other layers, per-concept weights.

On circle + star the rewrite of FFN2 (``--variant rewrite``) forgets star
only by also taking part of arrow, cross, bolt and bell, which share star's
strokes (benchmarks/README.md, "what the kept kinds' loss trades against").
Every weighting of the FFN2 edit moves along one line there. Two other
levers:

* **Layers whose input carries the text.** FFN2's inputs are visual
  features, which star shares with arrow. The cross-attention's output
  projection ``attn2.to_out.0`` sees, at every pixel, a softmax mix of the
  prompt's value rows, so a star prompt's input differs from an arrow
  prompt's by what the text says. The same closed-form rewrite (same
  statistics, same solve) runs there instead of, or beside, FFN2
  (``@attn_out``, ``@ffn2+attn_out``), through ``fia.erase``'s target filter.
  ``@ffn2_up1`` edits only the two FFN2 layers of ``up_blocks.1``, where the
  preset's weights move most: does the edit live there?
  ``@ffn1`` edits the feed-forward's first projection (``ff.net.0.proj``)
  instead: its outputs pass the gate's nonlinearity before they reach the
  image.
  ``@upconv`` edits the 3x3 convolution of ``up_blocks.1``'s upsampler
  (``UPCONV``), the first layer after that block's two transformers, whose
  input at each pixel is the 3 x 3 patch of their output around it: the
  convolution is swapped for the same map written as a linear over unfolded
  patches (:class:`ConvAsLinear`, equal to it up to float rounding), so the
  library's statistics and solve run on it unchanged; ``@ffn2+upconv``
  edits it beside FFN2. Every setting of a run that names it, the unedited
  model's images too, uses the swapped model.
* **The text rows themselves** (``@text_kv``). The same least squares on
  the cross-attention's key and value projections (``attn2.to_k``,
  ``attn2.to_v``), whose inputs are the text encoder's rows, with no sampler
  pass: each concept prompt's rows are paired position by position with the
  rows of the same prompt without the concept word ("a red star near the
  road" with "a red near the road"; the bare word with the empty prompt).
  Attention reads its rows as a set, so a layer that maps the one onto the
  other gives the cross-attention the scene's keys and values. The kept
  rows are every kept kind on the 12 fitting pairs and 5 more phrasings
  each, the object-less scenes and the empty prompt (40 copies: the
  unconditional branch must not move). It uses the setting's lambda, damping
  and eta; the kept set has no groups to balance.
* **Per-concept weights** (the issue's "adaptive budget", in the rewrite's
  terms). The concept term ``lambda |W' X_c - W Z|^2`` (``z = (1 + eta) x_t
  - eta x_c``) pools every erased concept's pairs. With ``#R`` the pairs are
  collected per concept and the term becomes ``lambda sum_c a_c |W' X_c^(c)
  - W Z^(c)|^2 / sum_c a_c``; after each solve every concept's remaining
  residual, relative to the unedited layer's,

      r_c = sum_layers E|W' x_c - W z|^2 / sum_layers E|W x_c - W z|^2,
      E|W' x_c - W z|^2 = tr(W' G_c W'^T) - 2 tr(W' E[x_c z^T] W^T) + tr(W E[z z^T] W^T),

  multiplies ``a_c`` by ``r_c / median r`` (capped at 4, renormalised to
  mean 1), ``R`` rounds: a concept the edit fits worst gets more weight.
  The kept groups are balanced inside each solve as in the library.
* **Refitting the kept term on the edited model's inputs** (``^N``). The
  library solves every layer on the unedited model's inputs, so an edit of
  one layer also moves the inputs of the layers after it, and nothing holds
  the kept prompts there. Here the kept prompts then run along the unedited
  model's trajectories with the unedited and the edited denoiser called on
  the same latents at every step, giving per layer the edited input ``x'``
  beside the unedited ``x``, and each layer is solved again so that
  ``W'' x' = W x`` on them (error-correcting calibration, as GPTQ does
  layer by layer):

      W'' (G'_k + lambda G_c + delta s I) = W X + lambda W ((1 + eta) C - eta G_c) + delta s W,
      G'_k = E[x' x'^T],  X = E[x x'^T]

  (the groups pooled with the first solve's balance weights; the concept
  statistics stay the unedited model's), ``N`` times.

Protocol of ``rewrite_generalisation.py``: the rewrite's prompts use 12 of
the 18 odd colour/place pairs, the judged images the other 6 (seeds from
400,000); no held-out image is used.

    python benchmarks/rewrite_levers.py [--concepts circle,star] [--images 16] [--erased-images 32] [--judged-offset 5]
        [--settings "0.05,0.03,5,4,24,1,1@attn_out;0.05,0.03,5,4,24,1,1#3"] [--verdicts bell,cross] [--out FILE]
    python benchmarks/rewrite_levers.py --concepts star --text-similarity --out FILE
    python benchmarks/rewrite_levers.py --anchor-ratios [--judged-offset 5] --out FILE

``--judged-offset 1`` or ``3`` rotates the fold: the judged images use the
odd pairs with place = colour + 1 (or + 3), the rewrite's prompts the other
two odd offsets (default 5, the split of every recorded figure).

``--steps N`` reads every setting's statistics along an N-step schedule
(``rewrite.steps``; default, the sampler's 25).

Each setting is a ``rewrite_generalisation.py`` setting, then optionally
``@TARGETS`` (``ffn2``, the default; ``attn_out``; ``ffn2+attn_out``; ``ffn2_up1``; ``ffn1``; ``upconv``;
``ffn2+upconv``; ``text_kv``), then
``#R`` (concept reweighting rounds; 0, the default, is the library's pooled
term) or ``^N`` (kept refits; 0 by default). Writes benchmarks/results/rewrite_levers.json (or ``--out``): per
setting F and P (oracle and second judge), the erased kinds' hits, the four
largest kept drops per judge, with ``#R`` each round's ``r_c`` and with ``^N``
each refit's relative move of every layer. ``SETTING~KIND+KIND`` (the
setting's eighth field, anchored guidance, above 0) anchors the push of those
erased concepts only, the others' staying relative to their scenes.
``SETTING&MU`` adds to each kept group's statistics the text-driven part of its prompts at the scale the
sampler applies it (:func:`text_part_kept`): ``G_g = (sum_rows x x^T + MU s^2 sum_samples d d^T) / rows`` with
``d = x_c - x_u``, the kept prompt's conditional row less its unconditional one at the same latents, and ``s``
the guidance scale.
``SETTING=text`` keeps the library's kept term but balances the kept groups by the change of that text part,
``tr(D G_d D^T) / tr(W G_d W^T)`` with ``G_d = E[d d^T]``, instead of their rows' (:func:`text_part_balanced`).
``SETTING*early`` weights each kept row by its sampler step, ``2 (T - t) / (T + 1)``, the noisiest first
(:func:`early_kept`). ``SETTING&MU*early`` does both: the text part beside the rows, rows and text part alike
weighted by their step (the one pair of levers measured together). ``SETTING!KIND:A+KIND:B`` gives the erased
concepts hand-picked shares of the concept term, normalised to a mean of 1 (:func:`concept_shares`; the library
weighs every concept 1).
``SETTING%anchored`` (or ``%all``) adds the anchor prompts to the kept term
as one more group, ``anchors_in_place``: each concept prompt with a kept kind
in its place, read at that prompt's latents, so the edit holds the kept
kinds' outputs where the concept is drawn (the anchored concepts' anchors,
which the library's pass already shows; or every concept's, one more
denoiser row for those not anchored, whose push stays relative to the scene).
With
``--verdicts KINDS`` the record also holds what the judges call those kept
kinds' judged images, unedited and under each setting (``verdicts``).
A row whose setting anchors the push records each concept's
``fia.rewrite.anchor_ratios`` ratio and whether it was anchored
(``anchoring``). ``--anchor-ratios`` writes that ratio for every kind of the
world erased alone, on the fold's fitting pairs, and stops (no image is judged).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fia
import fia.repair
import fia.rewrite
import fia.shapeworld.task
from fia.core.balance import balance_groups, group_changes, mix_grams
from fia.core.rewrite import Rewrite, rewrite_layer
from fia.io import atomic_write_text
from fia.repair import GRAM_BATCH
from fia.sampling import capture, generate, paired_steps
from fia.shapeworld import load_oracle, load_pipeline, load_second_judge
from fia.shapeworld.evaluate import generate as draw
from rewrite_generalisation import (KINDS, WORLD, add_fold_option, config_for, erase_and_judge, fitting_pairs, hits_per_kind,
                                    judged_images, rates, use_fold)

RESULTS = Path(__file__).resolve().parent / "results"
UPCONV = "up_blocks.1.upsamplers.0.conv"  # swapped for ConvAsLinear, whose linear the @upconv filters pick
UPCONV_LINEAR = UPCONV + ".linear"
TARGETS = {
    "ffn2": None,  # the config's own targets: FFN2, as the library edits it
    "attn_out": lambda _m, name: name.endswith(".attn2.to_out.0"),
    "ffn2+attn_out": lambda _m, name: name.endswith((".ff.net.2", ".attn2.to_out.0")),
    "ffn2_up1": lambda _m, name: name.endswith(".ff.net.2") and name.startswith("up_blocks.1."),  # where the edit moves most
    "ffn1": lambda _m, name: name.endswith(".ff.net.0.proj"),  # before the feed-forward's gate: the edit passes a nonlinearity
    # the upsampler's 3x3 convolution after up_blocks.1's transformers, as a linear over unfolded patches
    "upconv": lambda _m, name: name == UPCONV_LINEAR,
    "ffn2+upconv": lambda _m, name: name == UPCONV_LINEAR or name.endswith(".ff.net.2"),
    "text_kv": None,  # not through fia.erase: text_rows_edit
}
CONV_TARGETS = ("upconv", "ffn2+upconv")
EMPTY_PROMPT_COPIES = 40
KEPT_ANCHORS = ("anchored", "all")  # whose anchor prompts join the kept term (``SETTING%WHICH``)
ANCHORS_GROUP = "anchors_in_place"
WEIGHT_CAP = 4.0


class ConvAsLinear(nn.Module):
    """A stride-1 ``nn.Conv2d`` written as ``nn.Linear`` over its unfolded patches: ``y[:, :, p] = W patch_p + b``
    with ``W = conv.weight.reshape(C_out, C_in k_h k_w)`` (``F.unfold``'s order), so a target filter over linears
    reaches it and each pixel's patch is one row of the layer's input."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if (conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1 or not isinstance(conv.padding, tuple)
                or conv.padding_mode != "zeros"):  # F.unfold pads with zeros only
            raise ValueError(f"only a stride-1, undilated, ungrouped convolution with explicit zero padding is written as a linear, not {conv}")
        self.kernel_size, self.padding = conv.kernel_size, conv.padding
        self.linear = nn.Linear(conv.weight[0].numel(), conv.out_channels, bias=conv.bias is not None,
                                dtype=conv.weight.dtype, device=conv.weight.device)
        with torch.no_grad():
            self.linear.weight.copy_(conv.weight.reshape(conv.out_channels, -1))
            if conv.bias is not None:
                self.linear.bias.copy_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        patches = F.unfold(x, self.kernel_size, padding=self.padding).transpose(1, 2)  # (B, H W, C_in k_h k_w)
        return self.linear(patches).transpose(1, 2).reshape(b, -1, h, w)


def convs_as_linears(model: nn.Module, names: list[str]) -> None:
    """Swap each named convolution of ``model`` for its :class:`ConvAsLinear`, in place."""
    for name in names:
        parent, _, leaf = name.rpartition(".")
        owner = model.get_submodule(parent)
        setattr(owner, leaf, ConvAsLinear(getattr(owner, leaf)))


def residual(weight, new, gram_c, cross, gram_t, eta: float) -> float:
    """``E|W' x_c - W z|^2`` with ``z = (1 + eta) x_t - eta x_c`` from the moments ``G_c``, ``C = E[x_t x_c^T]``, ``G_t``."""
    w, wn = weight.to(torch.float64), new.to(torch.float64)
    ezz = (1 + eta) ** 2 * gram_t - eta * (1 + eta) * (cross + cross.T) + eta**2 * gram_c
    exz = (1 + eta) * cross.T - eta * gram_c
    return float(((wn @ gram_c) * wn).sum() - 2 * ((wn @ exz) * w).sum() + ((w @ ezz) * w).sum())


class _PerConcept:
    """``G_c``, ``C`` and ``G_t`` per (concept, layer), from ``[uncond; concept; scene]`` batches."""

    def __init__(self) -> None:
        self.sums: dict[tuple[str, str], list] = {}
        self.concept = ""

    def hook(self, name, _module, args, _output) -> None:
        _, xc, xt = args[0].detach().chunk(3)
        xc, xt = (x.reshape(-1, x.shape[-1]).to(torch.float64) for x in (xc, xt))
        parts = [xc.T @ xc, xt.T @ xc, xt.T @ xt, xc.shape[0]]
        key = (self.concept, name)
        self.sums[key] = [a + b for a, b in zip(self.sums[key], parts)] if key in self.sums else parts


def per_concept_moments(pipe, targets, prompts, config, names: list[str], batch_size: int = 16) -> dict[str, dict[str, tuple]]:
    """``concept -> layer -> (G_c, C, G_t)``: the library's paired pass (``fia.rewrite.paired_moments``), summed per concept."""
    acc, n = _PerConcept(), config.rewrite.concept_prompts_per_concept  # the prompts come concept by concept
    guides = ("follow", "prompts") if config.rewrite.concept_trajectory else ("follow",)
    with capture(targets, acc.hook):
        for i, concept in enumerate(names):
            acc.concept = concept
            shown, scene, seeds = (v[i * n : (i + 1) * n] for v in (prompts.concept, prompts.scene, prompts.concept_seeds))
            for guide, s in ((g, s) for g in guides for s in range(0, n, batch_size)):
                paired_steps(pipe, shown[s : s + batch_size], scene[s : s + batch_size], seeds[s : s + batch_size],
                             num_inference_steps=config.num_inference_steps, guidance_scale=config.guidance_scale, guide_by=guide)
    per: dict[str, dict[str, tuple]] = {}
    for (concept, layer), (g, c, t, count) in acc.sums.items():
        per.setdefault(concept, {})[layer] = (g.cpu() / count, c.cpu() / count, t.cpu() / count)
    return per


def per_concept_pass(names: list[str], per: dict) -> Callable:
    """A stand-in for ``fia.rewrite.paired_moments`` that also fills ``per`` with :func:`per_concept_moments`
    and returns the library's pooled ``G_c`` and ``C`` (every concept weighted 1), the push relative to the scene."""

    def moments(pipe, targets, prompts, config, batch_size=None):
        if config.rewrite.anchored_guidance:
            raise SystemExit("the per-concept levers measure the push relative to the scene; set anchored guidance to 0")
        batch_size = batch_size or config.batch_size or fia.rewrite.PAIRED_BATCH
        per.update(per_concept_moments(pipe, targets, prompts, config, names, batch_size))
        return (*mix_concepts(per, {c: 1.0 for c in names}), None, {})

    return moments


def mix_concepts(per: dict[str, dict[str, tuple]], a: dict[str, float]) -> tuple[dict, dict]:
    """``G_c`` and ``C`` by layer of the concept term ``sum_c a_c |W' X_c^(c) - W Z^(c)|^2 / n_concepts``: with every
    ``a_c = 1`` the library's pooled term (each concept has as many prompts)."""
    layers = per[next(iter(per))]
    return tuple({l: sum(a[c] * per[c][l][k] for c in per) / len(per) for l in layers} for k in (0, 1))


@contextlib.contextmanager
def concept_reweighting(names: list[str], rounds: int, log: list) -> Iterator[None]:
    """Within the block, ``fia.rewrite`` collects its concept pairs per concept and reweights them (module docstring)."""
    plain_solve = fia.rewrite.balanced_rewrite
    per: dict[str, dict[str, tuple]] = {}
    moments = per_concept_pass(names, per)

    def solve(weights, group_grams, sizes, _gram_c, _cross, *, negative_guidance=0.0, **kw):
        a = {c: 1.0 for c in names}
        for r in range(rounds + 1):
            result = plain_solve(weights, group_grams, sizes, *mix_concepts(per, a), negative_guidance=negative_guidance, **kw)
            rel = {c: sum(residual(w, result.weights[l], *per[c][l], negative_guidance) for l, w in weights.items())
                      / sum(residual(w, w, *per[c][l], negative_guidance) for l, w in weights.items()) for c in names}
            log.append({"round": r, "weights": {c: round(v, 3) for c, v in a.items()}, "residual": {c: round(v, 4) for c, v in rel.items()}})
            median = sorted(rel.values())[len(rel) // 2]
            a = {c: min(WEIGHT_CAP, a[c] * rel[c] / median) for c in names}
            a = {c: v * len(a) / sum(a.values()) for c, v in a.items()}  # mean 1: the concept term keeps its total weight
        return result

    with mock.patch.multiple(fia.rewrite, paired_moments=moments, balanced_rewrite=solve):
        yield


class _EditedInputs:
    """Per layer, sums of ``x' x'^T`` and ``x x'^T``: every batch goes through the denoiser unedited (``x``), then edited (``x'``)."""

    def __init__(self) -> None:
        self.edited = False
        self.unedited_input: dict[str, torch.Tensor] = {}
        self.sums: dict[str, list] = {}

    def hook(self, name, _module, args, _output) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float64)
        if not self.edited:
            self.unedited_input[name] = x
            return
        parts = [x.T @ x, self.unedited_input.pop(name).T @ x, x.shape[0]]
        self.sums[name] = [a + b for a, b in zip(self.sums[name], parts)] if name in self.sums else parts


@contextlib.contextmanager
def swapped_weights(modules: dict, new: dict) -> Iterator[None]:
    """Within the block the linears ``modules`` (name -> module) carry the weights ``new`` (cast to their dtype);
    their own weights are back after it, also on error."""
    unedited = {n: modules[n].weight.data for n in new}
    try:
        for n, w in new.items():
            modules[n].weight.data = w.to(unedited[n].dtype)
        yield
    finally:
        for n, w in unedited.items():
            modules[n].weight.data = w


def kept_members(prompts) -> dict[str, tuple[list[str], list[int]]]:
    """Each kept group's prompts and seeds, groups in first-seen order."""
    members: dict[str, tuple[list[str], list[int]]] = {}
    for p, s, g in zip(prompts.keep, prompts.keep_seeds, prompts.keep_groups):
        members.setdefault(g, ([], []))
        members[g][0].append(p)
        members[g][1].append(s)
    return members


def edited_kept_moments(pipe, targets, prompts, config, new) -> tuple[dict, dict]:
    """Per kept group and layer, ``G'_g`` and ``X_g`` (module docstring) along the unedited model's guided trajectories.

    The pipeline samples each kept group's prompts in a pass of its own (as the
    library's kept pass did when the refit figures were measured; it now shares
    batches across groups, the same statistics to rounding); a hook on the denoiser calls it a
    second time on the same inputs under the weights ``new``."""
    modules, acc = {t.name: t.module for t in targets}, _EditedInputs()

    def again_edited(module, args, kwargs, _output):
        if acc.edited:  # the edited call's own return
            return
        acc.edited = True
        try:
            with swapped_weights(modules, new):
                module(*args, **kwargs)
        finally:
            acc.edited = False

    grams, crosses = {}, {}
    handle = pipe.unet.register_forward_hook(again_edited, with_kwargs=True)
    try:
        for group, (batch, seeds) in kept_members(prompts).items():
            acc.sums = {}
            with capture(targets, acc.hook):
                for i in range(0, len(batch), GRAM_BATCH):
                    generate(pipe, batch[i : i + GRAM_BATCH], seeds[i : i + GRAM_BATCH], output_type="latent",
                             num_inference_steps=config.num_inference_steps, guidance_scale=config.guidance_scale)
            grams[group] = {n: g.cpu() / count for n, (g, _, count) in acc.sums.items()}
            crosses[group] = {n: x.cpu() / count for n, (_, x, count) in acc.sums.items()}
    finally:
        handle.remove()
    return grams, crosses


@contextlib.contextmanager
def kept_refit(rounds: int, log: list) -> Iterator[None]:
    """Within the block, ``fia.rewrite`` solves again ``rounds`` times with its kept term on the edited inputs (module docstring)."""
    plain_grams, plain_solve = fia.rewrite.group_grams, fia.rewrite.balanced_rewrite
    seen: dict = {}

    def group_grams(pipe, targets, prompts, config):
        seen.update(pipe=pipe, targets=targets, prompts=prompts, config=config)
        return plain_grams(pipe, targets, prompts, config)

    def solve(weights, group_grams_, sizes, gram_c, cross, *, concept_weight, damping, negative_guidance=0.0, reference=None, **kw):
        result = plain_solve(weights, group_grams_, sizes, gram_c, cross, concept_weight=concept_weight, damping=damping,
                             negative_guidance=negative_guidance, reference=reference, **kw)
        for _ in range(rounds):
            grams, crosses = edited_kept_moments(seen["pipe"], seen["targets"], seen["prompts"], seen["config"], result.weights)
            a = result.group_weights
            new = {name: rewrite_layer(w, mix_grams(grams, sizes, a, name), gram_c[name], cross[name], concept_weight=concept_weight,
                                       damping=damping, negative_guidance=negative_guidance,
                                       reference=None if reference is None else reference[name],
                                       keep_cross=mix_grams(crosses, sizes, a, name))
                   for name, w in weights.items()}  # fmt: skip
            log.append({n: round(float((new[n] - result.weights[n]).norm() / result.weights[n].norm()), 4) for n in new})
            result = Rewrite(new, result.group_weights, result.group_change)
        return result

    with mock.patch.multiple(fia.rewrite, group_grams=group_grams, balanced_rewrite=solve):
        yield


class _WeightEdit:
    """New weights for some linears, applied and restored like an edit file."""

    def __init__(self, modules: dict, new: dict) -> None:
        self.modules, self.new = modules, new
        self.unedited = {n: m.weight.data for n, m in modules.items()}

    def apply_(self, _pipe) -> None:
        for n, m in self.modules.items():
            m.weight.data = self.new[n]

    def restore_(self, _pipe) -> None:
        for n, m in self.modules.items():
            m.weight.data = self.unedited[n]


def without_concepts(prompts: list[str], erased: list[str]) -> list[str]:
    """Each prompt with the erased kinds' names and synonyms taken out ("a red star near the road" -> "a red near the road")."""
    pattern = re.compile(fia.shapeworld.task.kind_words(erased, WORLD) + " ?")
    return [pattern.sub("", p).strip() for p in prompts]


def text_rows_edit(pipe, erased: list[str], setting: str) -> _WeightEdit:
    """The ``@text_kv`` lever (module docstring): ``attn2.to_k`` / ``to_v`` rewritten on text rows alone."""
    from fia.shapeworld import vocab
    from fia.shapeworld.render import prompt_for

    rc = config_for(setting).rewrite
    kept = [o for o in KINDS if o not in erased]
    keep = [prompt_for(o, *fitting_pairs(k)) for o in kept for k in range(12)]
    for i, o in enumerate(kept):
        keep += [prompt_for(o), prompt_for(o, fitting_pairs(i)[0]), prompt_for(o, None, fitting_pairs(i + 1)[1]),
                 prompt_for(o, *fitting_pairs(i + 2), style=vocab.STYLE_NAMES[i % len(vocab.STYLE_NAMES)]),
                 prompt_for(o, *fitting_pairs(i + 3), attribute="burning")]
    keep += [prompt_for(None, *fitting_pairs(k)) for k in range(12)] + [""] * EMPTY_PROMPT_COPIES
    concept, _ = fia.shapeworld.task.concept_phrasings(erased, WORLD, rc.concept_prompts_per_concept)
    with torch.no_grad():
        rows = [torch.cat([pipe.encode_prompt(ps[i : i + 64], pipe.unet.device, 1, False)[0] for i in range(0, len(ps), 64)])
                .reshape(-1, pipe.text_encoder.config.hidden_size).cpu().to(torch.float64)
                for ps in (keep, concept, without_concepts(concept, erased))]
    xk, xc, xt = rows
    gram_k, gram_c, cross = xk.T @ xk / len(xk), xc.T @ xc / len(xc), xt.T @ xc / len(xc)
    modules = {n: m for n, m in pipe.unet.named_modules() if n.endswith((".attn2.to_k", ".attn2.to_v"))}
    new = {n: rewrite_layer(m.weight, gram_k, gram_c, cross, concept_weight=rc.concept_weight, damping=rc.damping,
                            negative_guidance=rc.negative_guidance).to(m.weight.dtype) for n, m in modules.items()}
    return _WeightEdit(modules, new)


def text_row_similarity(pipe, kind: str) -> dict[str, float]:
    """Cosine between ``kind``'s mean text rows after its word and every other kind's, over the 12 fitting pairs, highest first.

    The rows after the word carry it (the text encoder is causal); each kind's
    mean is taken over its prompts "a <colour> <kind> <place>" on the 12 pairs."""
    from fia.shapeworld.render import prompt_for

    means = {}
    with torch.no_grad():
        for o in KINDS:
            prompts = [prompt_for(o, *fitting_pairs(k)) for k in range(12)]
            rows = pipe.encode_prompt(prompts, pipe.unet.device, 1, False)[0].cpu().to(torch.float64)
            word = pipe.tokenizer.convert_tokens_to_ids(pipe.tokenizer.tokenize(o))[0]  # one token per kind in its world
            ids = pipe.tokenizer(prompts, padding="max_length", max_length=rows.shape[1]).input_ids
            means[o] = torch.stack([rows[i, row.index(word) + 1 :].mean(0) for i, row in enumerate(ids)]).mean(0)
    sims = {o: float(torch.nn.functional.cosine_similarity(means[kind], v, dim=0)) for o, v in means.items() if o != kind}
    return {o: round(v, 3) for o, v in sorted(sims.items(), key=lambda kv: -kv[1])}


def every_anchor_ratio(pipe) -> dict[str, float]:
    """Each kind's ``fia.rewrite.anchor_ratios`` ratio, erased alone at the preset's settings, lowest first."""
    from fia.presets import resolve_config
    from fia.targets import find_targets
    from fia.tasks import task_of

    # the ratio depends only on the rewrite's prompts and the sampler: the preset's, read from it, not restated
    config = resolve_config("shapeworld", overrides={"world": WORLD.name, "variant": "rewrite"})
    targets = find_targets(pipe.unet, config.targets)
    ratios = {}
    for kind in KINDS:
        prompts = task_of(config).rewrite_prompts([kind], config.rewrite, anchors=config.anchors, seed=config.seed)
        ratios[kind] = fia.rewrite.anchor_ratios(pipe, targets, prompts, config)[kind]
    return {k: round(v, 4) for k, v in sorted(ratios.items(), key=lambda kv: kv[1])}


def judged_start(pipe, erased: list[str], images: int, erased_images: int, command: str):
    """The judges, the judged images, the unedited model's hits on them, and the results record a run fills in."""
    judges = {"oracle": load_oracle(world=WORLD.name), "judge2": load_second_judge(world=WORLD.name)}
    shown = judged_images(images, erased, erased_images)
    base = hits_per_kind(pipe, judges, *shown)
    results = {"concepts": erased, "images": images, "erased_images": erased_images, "command": command,
               "unedited": rates(base, images, erased, erased_images), "settings": []}
    print("unedited", results["unedited"], flush=True)
    return judges, shown, base, results


def verdicts(pipe, judges, shown, kinds: list[str]) -> dict[str, dict[str, dict[str, int]]]:
    """``judge -> kind -> {label: images}`` on the judged images of ``kinds``, commonest label first: what a kind
    that stops being recognised is drawn as instead ("none": the oracle recognises no kind in the image)."""
    chosen = [(p, s, t) for p, s, t in zip(*shown) if t in kinds]
    truth = [t for _, _, t in chosen]
    x = draw(pipe, [p for p, _, _ in chosen], [s for _, s, _ in chosen])
    out = {}
    for name, judge in judges.items():
        labels = judge.labels(judge.predict(x))["object"]
        out[name] = {k: dict(Counter(label for label, t in zip(labels, truth) if t == k).most_common()) for k in kinds}
    return out


def judged_fields(hits: dict, base: dict, erased: list[str], images: int, erased_images: int) -> dict:
    """A setting's judged figures: F and P per judge, the erased kinds' hits, the four largest kept drops per judge."""
    drops = {j: [{"kind": o, "change": round((hits[j][o] - base[j][o]) / images, 4)}
                 for _, o in sorted((hits[j][o] - base[j][o], o) for o in KINDS if o not in erased)[:4]] for j in hits}
    return {"rates": rates(hits, images, erased, erased_images), "erased_hits": {o: {j: hits[j][o] for j in hits} for o in erased},
            "largest_kept_drops": drops}


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (how the command is recorded in the results)."""
    try:
        return str(path.resolve().relative_to(RESULTS.parents[1]))
    except ValueError:
        return str(path)


def alone(setting: str, mark: str, rest: str, others: str, also: bool = False) -> None:
    """Refuse a setting whose lever ``mark`` is joined by one of the ``others`` marks in ``rest`` (or ``also``):
    each lever is measured on the library's FFN2 rewrite alone."""
    if also or any(m in rest for m in others):
        raise SystemExit(f"{setting!r}: {mark} is measured on the library's FFN2 rewrite alone; measure one lever at a time")


def anchored_only(setting: str, erased: list[str]) -> tuple[str, list[str]]:
    """``(the rest of the setting, the concepts whose push is anchored)`` of a ``SETTING~KIND+KIND`` entry
    (no ``~``: every concept, as the library does)."""
    rest, _, kinds = setting.partition("~")
    if not kinds:
        return rest, list(erased)
    chosen = kinds.split("+")
    if not set(chosen) <= set(erased):
        raise SystemExit(f"{setting!r}: ~ names {', '.join(sorted(set(chosen) - set(erased)))}, which --concepts does not erase")
    alone(setting, "~", rest, "#^@", rest == "causal")
    if float(config_for(rest).rewrite.anchored_guidance) == 0:
        raise SystemExit(f"{setting!r}: ~ picks the concepts of anchored guidance; give the setting an eighth field > 0")
    return rest, chosen


class _AnchorsInPlace:
    """The library's paired moments (``G_c``, ``C`` and the anchors' shift ``(x_a - x_t) x_c^T``, summed over
    ``[uncond; concept; scene]`` or ``[...; anchor]`` batches; here with float64 products) beside
    ``G_a = sum x_a x_a^T`` over the images whose anchor joins the kept term. Per batch, ``shift_rows`` marks the images whose anchor is the push's reference
    (the library's anchored concepts; the others add no shift, as their ``x_a`` is ``x_t`` in the library's
    pass) and ``keep_rows`` those whose anchor is held."""

    def __init__(self) -> None:
        self.parts = 3
        self.shift_rows = self.keep_rows = torch.zeros(0, dtype=torch.bool)
        self.sums: dict[str, list[Tensor]] = {}
        self.count: dict[str, int] = {}
        self.anchor_count: dict[str, int] = {}

    def hook(self, name, _module, args, _output) -> None:
        xc, xt, *xa = (x.to(torch.float64) for x in args[0].detach().chunk(self.parts)[1:])
        flat = lambda x: x.reshape(-1, x.shape[-1])  # noqa: E731
        if name not in self.sums:
            self.sums[name] = [torch.zeros(xc.shape[-1], xc.shape[-1], dtype=torch.float64) for _ in range(4)]
            self.count[name] = self.anchor_count[name] = 0
        g_c, cross, shift, g_a = self.sums[name]
        g_c += flat(xc).T @ flat(xc)
        cross += flat(xt).T @ flat(xc)
        if xa:
            reference = self.shift_rows.view(-1, *[1] * (xc.dim() - 1)).to(xc.dtype)
            shift += flat((xa[0] - xt) * reference).T @ flat(xc)
            held = flat(xa[0][self.keep_rows])
            g_a += held.T @ held
            self.anchor_count[name] += held.shape[0]
        self.count[name] += flat(xc).shape[0]


@contextlib.contextmanager
def anchors_kept(which: str, log: list) -> Iterator[None]:
    """Within the block, the anchor prompts (each concept prompt with a kept kind in its place, at that prompt's
    latents) join the kept term as one more group, so the edit holds their outputs where the concept is drawn:
    the anchored concepts' (``which`` ``"anchored"``; the library already shows them) or every concept's
    (``"all"``; a concept not anchored shows its anchor too, but its push stays relative to its scene).
    The group counts as many prompts as it holds, and is balanced as the others are."""
    if which not in KEPT_ANCHORS:
        raise SystemExit(f"unknown kept anchors {which!r}; use one of: {', '.join(KEPT_ANCHORS)}")
    plain_solve = fia.rewrite.balanced_rewrite
    held: dict = {}

    def moments(pipe, targets, prompts, config, batch_size=None):
        beta = config.rewrite.anchored_guidance
        if not beta:
            raise SystemExit("the anchors as kept prompts need anchored guidance; give the setting an eighth field > 0")
        batch_size = batch_size or config.batch_size or fia.rewrite._batches(pipe)[1]
        shares = fia.rewrite.anchored_shares(fia.rewrite.anchor_ratios(pipe, targets, prompts, config, batch_size), beta,
                                             config.rewrite.anchored_below)
        anchored = {c for c, share in shares.items() if share["anchored"]}
        kept = anchored if which == "anchored" else set(prompts.owner)
        # per prompt: its anchor joins the kept term (a concept of ``kept`` with a kept kind in its place)
        holds_all = [o in kept and a != t for o, a, t in zip(prompts.owner, prompts.anchor, prompts.scene)]
        acc = _AnchorsInPlace()
        guides = ("follow", "prompts") if config.rewrite.concept_trajectory else ("follow",)
        with capture(targets, acc.hook):
            for guide in guides:
                for s in range(0, len(prompts.concept), batch_size):
                    owners, anchors, scenes = (v[s : s + batch_size] for v in (prompts.owner, prompts.anchor, prompts.scene))
                    holds = holds_all[s : s + batch_size]
                    shows = [h or o in anchored for h, o in zip(holds, owners)]
                    acc.parts = 4 if any(shows) else 3
                    acc.shift_rows = torch.tensor([o in anchored for o in owners])
                    acc.keep_rows = torch.tensor(holds)
                    paired_steps(pipe, prompts.concept[s : s + batch_size], scenes, prompts.concept_seeds[s : s + batch_size],
                                 num_inference_steps=fia.rewrite.statistics_steps(config), guidance_scale=config.guidance_scale,
                                 guide_by=guide, anchors=[a if h else t for h, a, t in zip(shows, anchors, scenes)] if any(shows) else None)
        gram_c = {n: m[0] / acc.count[n] for n, m in acc.sums.items()}
        cross = {n: m[1] / acc.count[n] for n, m in acc.sums.items()}
        held.clear()
        if any(acc.anchor_count.values()):
            held.update(grams={n: m[3] / acc.anchor_count[n] for n, m in acc.sums.items()}, size=sum(holds_all))
        log.append({"anchored": sorted(anchored), "held": sorted(kept), "prompts": held.get("size", 0)})
        reference = {n: cross[n] + beta * acc.sums[n][2] / acc.count[n] for n in cross} if anchored else None
        return gram_c, cross, reference, shares

    def solve(weights, group_grams, sizes, *rest, **kw):
        if held:
            group_grams, sizes = {**group_grams, ANCHORS_GROUP: held["grams"]}, {**sizes, ANCHORS_GROUP: held["size"]}
        return plain_solve(weights, group_grams, sizes, *rest, **kw)

    with mock.patch.multiple(fia.rewrite, paired_moments=moments, balanced_rewrite=solve):
        yield


@contextlib.contextmanager
def text_part_kept(mu: float, log: list, text_grams: dict | None = None) -> Iterator[None]:
    """Within the block, each kept group's ``G_g`` also holds ``mu s^2 E[d d^T]``, ``d = x_c - x_u`` per sample
    and token (its conditional row less its unconditional one, at the same latents), at the count of its rows:

        G_g = (sum_rows x x^T + mu s^2 sum_samples d d^T) / rows

    Why: the sampler steps with ``x_u + s d``, so what the prompt's text adds (what makes a kept kind that kind)
    reaches the image ``s`` times over, while the plain kept term weighs it as one small part of two rows.
    ``rewrite.keep_guided`` holds the guided row in place of the two rows; this keeps the rows and adds the
    text part beside them. ``log`` gets, per layer, ``tr(s^2 E[d d^T]) / tr(E[x x^T])`` over all kept rows.
    ``text_grams``, if given, is filled with each group's ``E[d d^T]`` per layer (``group -> layer -> G_d``)."""
    plain_hook, plain_collect = fia.repair._GroupGramAccumulator.hook, fia.repair.collect_group_grams
    traces: dict[str, list[float]] = {}
    scale: list[float] = []  # the pass's guidance scale, set by collect
    text_sums: dict[str, dict[str, list]] = {}  # group -> layer -> [sum d d^T, rows]

    def hook(self, name, module, args, output):
        if self.combine is not None or not self.guided:
            raise SystemExit("& adds the text part beside the kept rows: use it without keep_guided, with a guided sampler")
        plain_hook(self, name, module, args, output)
        x, n, s = args[0].detach(), len(self.batch_groups), scale[-1]
        for g in dict.fromkeys(self.batch_groups):
            idx = [i for i, gi in enumerate(self.batch_groups) if gi == g]
            uncond, cond = x[idx].to(self.product_dtype), x[[n + i for i in idx]].to(self.product_dtype)
            d = (cond - uncond).reshape(-1, x.shape[-1])
            rows = torch.cat([uncond, cond]).reshape(-1, x.shape[-1])
            product = (d.T @ d).to(torch.float64)
            if mu:
                self.sums[g][name] += (mu * s**2) * product
            if text_grams is not None:
                part = text_sums.setdefault(g, {}).setdefault(name, [0.0, 0])
                part[0], part[1] = part[0] + product, part[1] + d.shape[0]
            t = traces.setdefault(name, [0.0, 0.0])
            t[0] += s**2 * float((d * d).sum())
            t[1] += float((rows * rows).sum())

    def collect(*args, guidance_scale, **kw):
        scale.append(guidance_scale)
        grams = plain_collect(*args, guidance_scale=guidance_scale, **kw)
        if text_grams is not None:
            text_grams.update({g: {n: (total / rows).cpu() for n, (total, rows) in layers.items()} for g, layers in text_sums.items()})
        return grams

    try:
        with mock.patch.object(fia.repair._GroupGramAccumulator, "hook", hook), \
                mock.patch.object(fia.rewrite, "collect_group_grams", collect):
            yield
    finally:
        log.append({"text_part_over_rows": {n: round(a / b, 5) for n, (a, b) in sorted(traces.items())}})


@contextlib.contextmanager
def text_part_balanced(log: list, text_grams: dict | None = None) -> Iterator[None]:
    """Within the block, the kept term is the library's, but the balancing rounds measure each group's change on
    what its prompts' text adds (``G_d = E[d d^T]``, ``d = x_c - x_u``, :func:`text_part_kept`) instead of on its rows:

        c_g = sum over layers of tr(D G_d,g D^T) / tr(W G_d,g W^T),    D = W' - W

    Why: the rows' change weighs most what every prompt shares, so the groups that gain weight are the ones
    whose whole input moves (house when circle goes), not necessarily the ones whose drawn kind is at stake;
    the sampler steps with ``x_u + s d``, so a group whose ``d`` moves loses what makes it that kind.
    ``text_grams`` (``group -> layer -> G_d``) is filled by the kept pass; one given already filled is measured as is."""
    text_grams = {} if text_grams is None else text_grams

    def solve(weights, group_grams, sizes, gram_c, cross, *, concept_weight, damping, rounds, negative_guidance=0.0,
              reference=None, push_projectors=None):
        if push_projectors is not None:
            raise SystemExit("= measures the balancing alone; leave push_off_rank at 0")

        def one(alpha):
            return {name: rewrite_layer(w, mix_grams(group_grams, sizes, alpha, name), gram_c[name], cross[name],
                                        concept_weight=concept_weight, damping=damping, negative_guidance=negative_guidance,
                                        reference=None if reference is None else reference[name])
                    for name, w in weights.items()}

        balanced = balance_groups(one, lambda new: group_changes(weights, new, text_grams), group_grams, rounds)
        log.append({"group_weights": {g: round(a, 4) for g, a in sorted(balanced.group_weights.items())}})
        return Rewrite(balanced.result, balanced.group_weights, balanced.group_change)

    with text_part_kept(0.0, [], text_grams), mock.patch.object(fia.rewrite, "balanced_rewrite", solve):
        yield


@contextlib.contextmanager
def early_kept(log: list) -> Iterator[None]:
    """Within the block, each kept row at sampler step ``t`` (of ``T``; ``t = 0`` the noisiest) counts
    ``w_t = 2 (T - t) / (T + 1)`` times in its group's ``G_g`` (mean 1 over the steps, so ``G_g`` keeps its scale):

        G_g = sum_t w_t sum_rows(t) x x^T / rows

    Why: which kind an image shows is settled in the first steps, the details after; an edit that holds the kept
    kinds' early rows more tightly should spare what makes them that kind. The concept term is unchanged.
    ``log`` gets the weights and the denoiser calls seen per batch (each must be ``T``)."""
    plain_hook, plain_generate = fia.repair._GroupGramAccumulator.hook, fia.repair.generate
    calls: dict[str, int] = {}
    steps: list[int] = []

    def weight(t: int, total: int) -> float:
        return 2 * (total - t) / (total + 1)

    def hook(self, name, module, args, output):
        t = calls[name] = calls.get(name, -1) + 1
        if t >= steps[-1]:
            raise SystemExit(f"{name} was called {t + 1} times in one batch of {steps[-1]} steps: *early needs one denoiser call per step")
        plain_hook(self, name, module, (args[0] * weight(t, steps[-1]) ** 0.5, *args[1:]), output)

    def generate(pipe, *args, num_inference_steps, **kw):
        steps.append(num_inference_steps)
        calls.clear()
        out = plain_generate(pipe, *args, num_inference_steps=num_inference_steps, **kw)
        if any(c + 1 != num_inference_steps for c in calls.values()):
            raise SystemExit(f"*early counted {sorted(set(c + 1 for c in calls.values()))} denoiser calls in a batch of {num_inference_steps} steps")
        return out

    with mock.patch.object(fia.repair._GroupGramAccumulator, "hook", hook), mock.patch.object(fia.repair, "generate", generate):
        yield
    log.append({"steps": steps[-1] if steps else None, "weights": [round(weight(t, steps[-1]), 4) for t in range(steps[-1])] if steps else []})


@contextlib.contextmanager
def concept_shares(shares: dict[str, float], log: list) -> Iterator[None]:
    """Within the block, concept ``c``'s pairs count ``a_c`` times in the library's concept term (``shares``
    normalised to a mean of 1 over the erased concepts, so the term keeps its total weight):

        G_c = sum_c a_c sum_pairs(c) x_c x_c^T / pairs,   C and R alike

    Each paired batch's rows (concept, scene, anchor) are scaled by ``a_c^(1/2)`` before the library's hook
    reads them, so every moment, bilinear in them, weighs ``a_c``. The anchor ratios, read by another hook,
    are unchanged. A concept the edit erases at a fraction of the term (circle beside star) can then give
    its share to one that leaks. ``log`` gets the shares used."""
    plain_hook, plain_moments, plain_steps = fia.rewrite._PairedMoments.hook, fia.rewrite.paired_moments, fia.rewrite.paired_steps
    share_of: dict[tuple[str, int], float] = {}  # (concept prompt, seed) -> its concept's share
    factors: list[Tensor] = []  # the batch now running: sqrt(a) per image

    def moments(pipe, targets, prompts, config, batch_size=None):
        unknown = sorted(set(shares) - set(prompts.owner))
        if unknown:
            raise SystemExit(f"! names concepts that are not erased: {', '.join(unknown)}")
        a = {c: shares.get(c, 1.0) for c in dict.fromkeys(prompts.owner)}
        a = {c: v * len(a) / sum(a.values()) for c, v in a.items()}
        log.append({"shares": {c: round(v, 4) for c, v in a.items()}})
        share_of.clear()
        share_of.update({(p, s): a[o] for p, s, o in zip(prompts.concept, prompts.concept_seeds, prompts.owner)})
        return plain_moments(pipe, targets, prompts, config, batch_size)

    def steps(pipe, prompts, follow, seeds, **kw):
        factors[:] = [torch.tensor([share_of[p, s] ** 0.5 for p, s in zip(prompts, seeds)])]
        return plain_steps(pipe, prompts, follow, seeds, **kw)

    def hook(self, name, module, args, output):
        x, f = args[0], factors[0].to(args[0].device, args[0].dtype)
        scaled = x * f.repeat(x.shape[0] // len(f)).view(-1, *([1] * (x.dim() - 1)))
        plain_hook(self, name, module, (scaled, *args[1:]), output)

    with mock.patch.object(fia.rewrite._PairedMoments, "hook", hook), \
            mock.patch.multiple(fia.rewrite, paired_moments=moments, paired_steps=steps):
        yield


def shares_of(setting: str, erased: list[str]) -> tuple[str, dict[str, float]]:
    """``(the rest of the setting, concept -> share)`` of a ``SETTING!KIND:A+KIND:A`` entry (no ``!``: ``{}``);
    every kind named must be one of ``erased``."""
    rest, _, spec = setting.partition("!")
    if not spec:
        return rest, {}
    shares = {}
    for part in spec.split("+"):
        kind, _, value = (p.strip() for p in part.partition(":"))
        try:
            shares[kind] = float(value)
        except ValueError:
            raise SystemExit(f"{setting!r}: ! takes KIND:SHARE+KIND:SHARE, not {part!r}") from None
        if shares[kind] <= 0:
            raise SystemExit(f"{setting!r}: a concept's share must be above 0")
    unknown = sorted(set(shares) - set(erased))
    if unknown:
        raise SystemExit(f"{setting!r}: ! names {', '.join(unknown)}, which --concepts does not erase")
    alone(setting, "!", rest, "#^@~%&=*")
    return rest, shares


def early_of(setting: str) -> tuple[str, bool]:
    """``(the rest of the setting, whether the kept rows are weighted towards early steps)`` of a ``SETTING*early``
    entry."""
    rest, _, mark = setting.partition("*")
    if mark and mark != "early":
        raise SystemExit(f"{setting!r}: unknown step weighting {mark!r}; use *early")
    if mark:  # & (the text part) may join it: text_part_early
        alone(setting, "*", rest, "#^@~%=")
    return rest, bool(mark)


@contextlib.contextmanager
def text_part_early(mu: float, log: list) -> Iterator[None]:
    """Within the block, the text part (:func:`text_part_kept`) joins each kept group and every kept row and
    text part counts by its step (:func:`early_kept`): ``early_kept`` scales each step's inputs by ``w_t^(1/2)``
    before the text part's hook reads them, so ``x x^T`` and ``d d^T`` both weigh ``w_t``."""
    with text_part_kept(mu, log), early_kept(log):
        yield


def balance_of(setting: str) -> tuple[str, str]:
    """``(the rest of the setting, what the balancing measures)`` of a ``SETTING=text`` entry (no ``=``: ``""``,
    the library's rows)."""
    rest, _, metric = setting.partition("=")
    if metric and metric != "text":
        raise SystemExit(f"{setting!r}: unknown balancing measure {metric!r}; use =text")
    if metric:
        alone(setting, "=", rest, "#^@~%&")
    return rest, metric


def text_part_of(setting: str) -> tuple[str, float]:
    """``(the rest of the setting, MU)`` of a ``SETTING&MU`` entry (no ``&``: 0, the library's kept term)."""
    rest, _, mu = setting.partition("&")
    if not mu:
        return rest, 0.0
    try:
        weight = float(mu)
    except ValueError:
        raise SystemExit(f"{setting!r}: & takes the text part's weight, a number, not {mu!r}") from None
    if weight <= 0:
        raise SystemExit(f"{setting!r}: the text part's weight must be above 0")
    alone(setting, "&", rest, "#^@~%")
    if config_for(rest).rewrite.keep_guided:
        raise SystemExit(f"{setting!r}: & adds the text part beside the kept rows; leave keep_guided (the tenth field) at 0")
    return rest, weight


def kept_anchors_of(setting: str) -> tuple[str, str]:
    """``(the rest of the setting, which anchors are kept)`` of a ``SETTING%anchored`` or ``SETTING%all`` entry
    (no ``%``: ``""``, none)."""
    rest, _, which = setting.partition("%")
    if which and which not in KEPT_ANCHORS:
        raise SystemExit(f"{setting!r}: unknown kept anchors {which!r}; use one of: {', '.join(KEPT_ANCHORS)}")
    if which:
        alone(setting, "%", rest, "#^@~")
    if which and float(config_for(rest).rewrite.anchored_guidance) == 0:
        raise SystemExit(f"{setting!r}: % holds the anchors of anchored guidance; give the setting an eighth field > 0")
    return rest, which


@contextlib.contextmanager
def anchored_for(kinds: list[str]) -> Iterator[None]:
    """Within the block, only ``kinds``' concept prompts take the library's anchor (a kept kind in their place);
    every other concept's push stays relative to its scene. The library's prompts come concept by concept,
    as many each."""
    plain = fia.shapeworld.task.kept_in_place

    def in_place(concept, scene, erased, world):
        anchors, per_concept = plain(concept, scene, erased, world), len(concept) // len(erased)
        return [a if erased[i // per_concept] in kinds else t for i, (a, t) in enumerate(zip(anchors, scene))]

    with mock.patch.object(fia.shapeworld.task, "kept_in_place", in_place):
        yield


def with_steps(config, steps: int | None):
    """``config`` with ``rewrite.steps`` set to ``steps`` (``None``: as it is)."""
    return config if steps is None else config.replace(rewrite=dataclasses.replace(config.rewrite, steps=steps))


def parse(setting: str) -> tuple[str, str, int, int]:
    """``(rewrite_generalisation setting, targets, concept rounds, kept refits)`` of one ``--settings`` entry."""
    base, _, refits = setting.partition("^")
    base, _, rounds = base.partition("#")
    base, _, targets = base.partition("@")
    targets = targets or "ffn2"
    if targets not in TARGETS:
        raise SystemExit(f"unknown targets {targets!r} in {setting!r}; use one of: {', '.join(TARGETS)}")
    if targets == "text_kv" and (rounds or refits):
        raise SystemExit(f"{setting!r}: the text-row edit has no concept reweighting or kept refit")
    if rounds and refits:
        raise SystemExit(f"{setting!r} asks for concept reweighting (#) and kept refits (^) at once; measure one lever at a time")
    return base, targets, int(rounds or 0), int(refits or 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concepts", default="circle,star")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--erased-images", type=int, default=32)
    ap.add_argument("--settings", default="0.05,0.03,5,4,24,1,1;0.05,0.03,5,4,24,1,1@attn_out;0.05,0.03,5,4,24,1,1@ffn2+attn_out")
    ap.add_argument("--out", type=Path, default=RESULTS / "rewrite_levers.json")
    add_fold_option(ap)
    ap.add_argument("--verdicts", default="", help="comma-separated kept kinds whose judged images' verdicts are recorded")
    ap.add_argument("--steps", type=int, help="every setting's rewrite.steps: its statistics along a schedule of this many steps")
    ap.add_argument("--anchor-ratios", action="store_true",
                    help="write every kind's anchor ratio (fia.rewrite.anchor_ratios), erased alone, and stop")
    ap.add_argument("--text-similarity", action="store_true",
                    help="write each erased kind's text-row similarity to every other kind (text_row_similarity) and stop")
    args = ap.parse_args()
    erased = [c.strip() for c in args.concepts.split(",")]
    shared = [shares_of(s, erased) for s in args.settings.split(";")]  # bad input stops before any model work
    earlies = [early_of(rest) for rest, _ in shared]
    balances = [balance_of(rest) for rest, _ in earlies]
    text_parts = [text_part_of(rest) for rest, _ in balances]
    held_anchors = [kept_anchors_of(rest) for rest, _ in text_parts]
    anchored = [anchored_only(rest, erased) for rest, _ in held_anchors]
    settings = [parse(rest) for rest, _ in anchored]
    watched = [k.strip() for k in args.verdicts.split(",") if k.strip()]
    unknown = [k for k in watched if k not in KINDS]
    if unknown:
        raise SystemExit(f"--verdicts names kinds the world does not have: {', '.join(unknown)}")
    use_fold(args.judged_offset)
    fia.shapeworld.task.scene_pair = fitting_pairs  # the rewrite's prompts: 12 of the 18 odd pairs only
    pipe = load_pipeline(world=WORLD.name)
    if any(targets in CONV_TARGETS for _, targets, _, _ in settings):
        convs_as_linears(pipe.unet, [UPCONV])  # before the unedited images, so every row is judged on one model
    if args.anchor_ratios:
        ratios = every_anchor_ratio(pipe)
        command = f"python benchmarks/rewrite_levers.py --anchor-ratios --judged-offset {args.judged_offset} --out {_shown(args.out)}"
        atomic_write_text(args.out, json.dumps({"command": command, "anchor_over_concept": ratios}, indent=1))
        print(json.dumps(ratios))
        return
    if args.text_similarity:
        sims = {c: text_row_similarity(pipe, c) for c in erased}
        atomic_write_text(args.out, json.dumps({"command": f"python benchmarks/rewrite_levers.py --concepts {args.concepts} "
                                                           f"--text-similarity --out {_shown(args.out)}", "similarity": sims}, indent=1))
        print(json.dumps(sims))
        return
    command = (f"python benchmarks/rewrite_levers.py --concepts {args.concepts} --images {args.images} "
               f"--erased-images {args.erased_images} --settings \"{args.settings}\" --out {_shown(args.out)}"
               + (f" --judged-offset {args.judged_offset}" if args.judged_offset != 5 else "")
               + (f" --verdicts {args.verdicts}" if args.verdicts else "")
               + (f" --steps {args.steps}" if args.steps else ""))
    judges, images, base, results = judged_start(pipe, erased, args.images, args.erased_images, command)
    if watched:
        results["unedited_verdicts"] = verdicts(pipe, judges, images, watched)
    for text, (setting, targets, rounds, refits), (_, anchored_kinds), (_, kept_anchors), (_, text_part), (_, balance), (_, early), (_, shares) in zip(
            args.settings.split(";"), settings, anchored, held_anchors, text_parts, balances, earlies, shared):
        log: list = []
        lever = (concept_shares(shares, log) if shares else concept_reweighting(erased, rounds, log) if rounds else kept_refit(refits, log) if refits else
                 anchors_kept(kept_anchors, log) if kept_anchors else
                 text_part_early(text_part, log) if text_part and early else text_part_kept(text_part, log) if text_part else
                 text_part_balanced(log) if balance else early_kept(log) if early else
                 anchored_for(anchored_kinds) if anchored_kinds != erased else contextlib.nullcontext())
        with lever:
            made: dict = {}

            def erase(setting=setting, targets=targets, made=made):
                made["edit"] = (text_rows_edit(pipe, erased, setting) if targets == "text_kv" else
                                fia.erase(pipe, erased, with_steps(config_for(setting), args.steps), targets=TARGETS[targets]))
                return made["edit"]

            hits, seconds = erase_and_judge(pipe, judges, images, erase)
        if watched:
            made["edit"].apply_(pipe)
            try:
                made["verdicts"] = verdicts(pipe, judges, images, watched)
            finally:
                made["edit"].restore_(pipe)
        row = {"setting": text, "targets": targets, "concept_rounds": rounds, "kept_refits": refits, "seconds": round(seconds, 1),
               **judged_fields(hits, base, erased, args.images, args.erased_images),
               **({"concept_residuals": log} if rounds else {"refit_moves": log} if refits else
                  {"kept_anchors": log} if kept_anchors else {"text_part": log} if text_part else
                  {"text_balance": log} if balance else {"early_kept": log} if early else {"concept_shares": log} if shares else {}),
               **({"verdicts": made["verdicts"]} if watched else {}),
               **({"anchoring": made["edit"].stats["anchoring"]} if "anchoring" in (getattr(made["edit"], "stats", None) or {}) else {})}
        results["settings"].append(row)
        print(text, row["rates"], row["erased_hits"], row["largest_kept_drops"], flush=True)
        atomic_write_text(args.out, json.dumps(results, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
