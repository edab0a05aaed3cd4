"""The probes, each registered under its exact name.

A probe draws the attempts of one concept on the model under attack (the
edited pipeline, or the unedited one for the ceiling) and says which
prompts and settings it used; the runner (:mod:`fia.attack.runner`) judges
the images. Every probe is a function ``probe(ctx) -> Drawn``:

* ``paraphrase``: prompts naming the concept in words the erasure never saw.
* ``prompt-attack`` (UnlearnDiffAtk-style, white box): ``k`` tokens
  prepended to a concept prompt, optimised so that the *attacked* model's
  denoising loss on the unedited model's concept images is minimal; the
  search runs on continuous embeddings, each step projected to the nearest
  token embeddings (the forward pass uses the projection, the gradient
  updates the continuous copy), with restarts; images come from the best
  discrete prompt with fresh seeds.
* ``concept-vector`` (Ring-A-Bell-style): ``d = mean E(concept prompts) -
  mean E(their base prompts)`` over whole prompt embeddings; innocuous
  prompts' embeddings plus ``m * d`` for each multiplier ``m``.
* ``textual-inversion``: one new token embedding learnt on the attacked
  model from the unedited model's concept images (denoising loss, at most
  300 steps), then drawn in the concept's prompts in place of its name.
* ``completion``: the unedited model's concept images noised to each level
  of the schedule, then finished by the attacked model's sampler.
* ``revival`` (data-free, after "Roots Beneath the Cut"): the exact zeros
  pruning left in the attacked model refilled from their rows' and columns'
  unpruned weights (:mod:`fia.attack.revival`), then the concept's own
  prompts drawn; the same prompts and seeds before the refill are drawn as
  a reference that is not counted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from fia.attack.config import AttackConfig
from fia.attack.model import AttackModel, completion_steps, embedding_scale, frozen
from fia.attack.texts import ConceptTexts

# attempts start from seeds this far above the target images' seeds, so no attempt
# reuses the noise of an image the attack fitted to
ATTEMPT_SEED_OFFSET = 100_000
# the prompt attack's and textual inversion's loss noise: seed + this + step
LOSS_SEED_OFFSET = 200_000


@dataclass
class ProbeContext:
    """What a probe gets: the model under attack, the budgets, the concept's prompts and target images."""

    model: AttackModel
    config: AttackConfig
    texts: ConceptTexts
    # the unedited model's concept images (latents) and the prompts they were drawn from
    targets: Tensor | None = None
    target_prompts: tuple[str, ...] = ()

    def attempt_seeds(self, n: int) -> list[int]:
        base = self.config.seed + ATTEMPT_SEED_OFFSET
        return [base + j for j in range(n)]

    def cycle(self, items: Sequence[str], n: int) -> list[str]:
        return [items[j % len(items)] for j in range(n)]


@dataclass
class Drawn:
    """A probe's attempts: images ``(N, 3, H, W)`` in [0, 1], grouped in settings, with what made them.

    ``settings[i]`` names setting ``i`` (``"m=2.0"``, ``"t=0.7"``, a prompt) and
    ``groups[i]`` the indices of its images; ``prompts[j]`` is image ``j``'s prompt.
    ``reference`` lists settings drawn only to compare with (revival's model
    before the refill): judged and shown, not counted as attempts.
    """

    images: Tensor
    prompts: list[str]
    settings: list[str]
    groups: list[list[int]]
    details: dict[str, Any] = field(default_factory=dict)
    reference: tuple[int, ...] = ()


Probe = Callable[[ProbeContext], Drawn]
PROBES: dict[str, Probe] = {}
# which probes need the unedited model's concept images
NEEDS_TARGETS = {"prompt-attack", "textual-inversion", "completion"}


def probe(name: str) -> Callable[[Probe], Probe]:
    """Register a probe function under ``name``."""

    def wrap(fn: Probe) -> Probe:
        if name in PROBES:
            raise ValueError(f"probe {name!r} is registered twice")
        PROBES[name] = fn
        return fn

    return wrap


def _one_group_per_setting(settings: list[str], per_setting: int) -> list[list[int]]:
    return [list(range(i * per_setting, (i + 1) * per_setting)) for i in range(len(settings))]


# ------------------------------------------------------------------ paraphrase
@probe("paraphrase")
def paraphrase(ctx: ProbeContext) -> Drawn:
    """``images`` images of each of the first ``paraphrases`` paraphrases."""
    chosen = list(ctx.texts.paraphrases[: ctx.config.paraphrases])
    n = ctx.config.images
    prompts = [p for p in chosen for _ in range(n)]
    seeds = ctx.attempt_seeds(n) * len(chosen)
    images = ctx.model.draw(ctx.model.encode(prompts), seeds)
    return Drawn(images, prompts, chosen, _one_group_per_setting(chosen, n))


# --------------------------------------------------------------- prompt attack
def nearest_tokens(vectors: Tensor, table: Tensor, allowed: Tensor) -> Tensor:
    """For each row of ``vectors``, the id (among ``allowed``) of the nearest token embedding (Euclidean)."""
    dist = torch.cdist(vectors.detach().float(), table[allowed].float())
    return allowed[dist.argmin(dim=1)]


def _search_tokens(ctx: ProbeContext, restart: int) -> tuple[list[int], float, list[float]]:
    """One restart of the token search: (best ids, their loss, the loss of every step)."""
    cfg, model = ctx.config, ctx.model
    table, allowed = model.token_table, model.ordinary_ids()
    g = torch.Generator().manual_seed(cfg.seed * 1009 + restart)
    start = allowed[torch.randint(len(allowed), (cfg.tokens,), generator=g)]
    soft = table[start].clone().float().requires_grad_(True)
    opt = torch.optim.Adam([soft], lr=cfg.attack_lr * embedding_scale(table))
    prefix = [None] * cfg.tokens
    best_ids, best_loss, losses = start.tolist(), float("inf"), []
    for step in range(cfg.attack_steps):
        ids = nearest_tokens(soft, table, allowed)
        # straight-through: the forward pass sees the projected tokens, the gradient moves the soft copy
        hard = soft + (table[ids].float() - soft).detach()
        cond = model.encode_with_slots(ctx.target_prompts, hard, prefix)
        loss_gen = torch.Generator().manual_seed(cfg.seed + LOSS_SEED_OFFSET + 7919 * restart + step)
        loss = model.denoising_loss(ctx.targets, cond, loss_gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if losses[-1] < best_loss:
            best_ids, best_loss = ids.tolist(), losses[-1]
    return best_ids, best_loss, losses


def held_out_loss(ctx: ProbeContext, cond: Tensor, repeats: int = 4) -> float:
    """The denoising loss on the targets under ``cond``, on the same fixed noise for every candidate."""
    total = 0.0
    with torch.no_grad():
        for r in range(repeats):
            gen = torch.Generator().manual_seed(ctx.config.seed + LOSS_SEED_OFFSET - 1 - r)
            total += float(ctx.model.denoising_loss(ctx.targets, cond, gen))
    return total / repeats


@probe("prompt-attack")
def prompt_attack(ctx: ProbeContext) -> Drawn:
    """UnlearnDiffAtk-style token search (module docstring), ``restarts`` x ``attack_steps``; ``images`` images."""
    cfg, model = ctx.config, ctx.model
    candidates = []
    with frozen(model.unet, model.text_encoder), torch.enable_grad():
        for r in range(cfg.restarts):
            ids, _, losses = _search_tokens(ctx, r)
            cond = torch.cat([model.encode_ids(torch.tensor([model.token_ids(p, prefix=ids)[0]])) for p in ctx.target_prompts])
            candidates.append((held_out_loss(ctx, cond), r, ids, losses))
    loss, restart, ids, losses = min(candidates, key=lambda c: (c[0], c[1]))
    n = cfg.images
    bodies = ctx.cycle(ctx.target_prompts, n)
    rows = torch.tensor([model.token_ids(p, prefix=ids)[0] for p in bodies])
    with torch.no_grad():
        images = model.draw(model.encode_ids(rows), ctx.attempt_seeds(n))
    tokens = model.tokenizer.convert_ids_to_tokens(ids)
    words = model.tokenizer.decode(ids)
    prompts = [f"[{words}] {p}" for p in bodies]
    details = {
        "token_ids": ids,
        "tokens": tokens,
        "restart": restart,
        "held_out_loss_per_restart": [c[0] for c in candidates],
        "loss_first_last": [losses[0], losses[-1]],
    }
    return Drawn(images, prompts, [f"[{words}] + concept prompt"], [list(range(n))], details)


# -------------------------------------------------------------- concept vector
def concept_direction(model: AttackModel, texts: ConceptTexts) -> Tensor:
    """Ring-A-Bell's concept vector ``mean E(prompts) - mean E(bases)`` over whole prompt embeddings ``(L, D)``."""
    return model.encode(texts.prompts).float().mean(0) - model.encode(texts.bases).float().mean(0)


@probe("concept-vector")
def concept_vector(ctx: ProbeContext) -> Drawn:
    """Innocuous prompts plus ``m`` times the concept direction, ``images`` images per multiplier."""
    model, n = ctx.model, ctx.config.images
    direction = concept_direction(model, ctx.texts)
    innocuous = ctx.cycle(ctx.texts.bases, n)
    base = model.encode(innocuous).float()
    settings = [f"m={float(m):g}" for m in ctx.config.multipliers]
    conds = torch.cat([(base + float(m) * direction).to(base.dtype) for m in ctx.config.multipliers])
    images = model.draw(conds, ctx.attempt_seeds(n) * len(settings))
    prompts = [f"{p} + {s} * direction" for s in settings for p in innocuous]
    details = {"direction_norm": float(direction.norm()), "pairs": len(ctx.texts.prompts)}
    return Drawn(images, prompts, settings, _one_group_per_setting(settings, n), details)


# ----------------------------------------------------------- textual inversion
@probe("textual-inversion")
def textual_inversion(ctx: ProbeContext) -> Drawn:
    """Learn one token on the attacked model from the target images, then draw ``images`` images with it."""
    from fia.attack.texts import MARKER

    cfg, model = ctx.config, ctx.model
    table, allowed = model.token_table, model.ordinary_ids()
    fit_prompts = [ctx.texts.placeholders[ctx.texts.prompts.index(p)] for p in ctx.target_prompts]
    # start from the mean token, so the search is not handed the concept's own word
    vector = table[allowed].float().mean(0, keepdim=True).clone().requires_grad_(True)
    opt = torch.optim.Adam([vector], lr=cfg.inversion_lr * embedding_scale(table))
    losses = []
    with frozen(model.unet, model.text_encoder), torch.enable_grad():
        for step in range(cfg.inversion_steps):
            cond = model.encode_with_slots(fit_prompts, vector)
            gen = torch.Generator().manual_seed(cfg.seed + LOSS_SEED_OFFSET + step)
            loss = model.denoising_loss(ctx.targets, cond, gen)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    n = cfg.images
    prompts = ctx.cycle(ctx.texts.placeholders, n)
    with torch.no_grad():
        images = model.draw(model.encode_with_slots(prompts, vector.detach()), ctx.attempt_seeds(n))
    details = {"steps": cfg.inversion_steps, "loss_first_last": [losses[0], losses[-1]], "token": MARKER}
    return Drawn(images, prompts, [f"learnt {MARKER} in the concept's prompts"], [list(range(n))], details)


# ------------------------------------------------------------------ completion
@probe("completion")
def completion(ctx: ProbeContext) -> Drawn:
    """Each target image noised to each level, finished by the attacked model: ``images`` per level."""
    model, n = ctx.model, ctx.config.images
    sources = [j % len(ctx.targets) for j in range(n)]
    z0 = ctx.targets[sources]
    prompts = [ctx.target_prompts[s] for s in sources]
    cond = model.encode(prompts)
    settings, images, all_prompts = [], [], []
    for level in ctx.config.noise_levels:
        run = completion_steps(model.steps, float(level))
        settings.append(f"t={float(level):g} ({run} of {model.steps} steps)")
        images.append(model.decode(model.complete(z0, cond, float(level), ctx.attempt_seeds(n))))
        all_prompts += [f"{p} (from target image {s}, noised to t={float(level):g})" for p, s in zip(prompts, sources)]
    return Drawn(torch.cat(images), all_prompts, settings, _one_group_per_setting(settings, n))


# --------------------------------------------------------------------- revival
@probe("revival")
def revival(ctx: ProbeContext) -> Drawn:
    """The concept's own prompts on the model as given, then with its exact zeros refilled: ``images`` each.

    Only the refilled images count as attempts; the first row is the
    reference that shows what the refill changed. The refill reads nothing
    but the model under attack (:mod:`fia.attack.revival`), and the zeros
    are back when the probe returns.
    """
    from fia.attack.revival import refilled

    model, n = ctx.model, ctx.config.images
    prompts = ctx.cycle(ctx.texts.prompts, n)
    seeds = ctx.attempt_seeds(n)
    cond = model.encode(prompts)
    before = model.draw(cond, seeds)
    with refilled(model.unet, ctx.config.refill) as found:
        after = model.draw(cond, seeds)
    settings = [
        "the model as given (zeros kept)",
        f"zeros refilled ({found['refill']}): {found['refilled']} weights in {found['layers']} layers",
    ]
    groups = [list(range(n)), list(range(n, 2 * n))]
    return Drawn(torch.cat([before, after]), prompts * 2, settings, groups, found, reference=(0,))


def probe_names() -> list[str]:
    """Every registered probe name, in the audit's order."""
    return list(PROBES)
