"""ESD-x: erase a concept by fine-tuning cross-attention with negative guidance.

Reference: R. Gandikota, J. Materzynska, J. Fiotto-Kaufman, D. Bau,
"Erasing Concepts from Diffusion Models", arXiv:2303.07345 (ICCV 2023),
the method section ("Erasing Stable Diffusion"): the negatively guided
fine-tuning target (the last equation of that section, restated in step 3
below; it follows from classifier-free guidance by reversing the sign of the
concept's guidance), the training loop in which ``x_t`` is produced by
partially denoising with the model conditioned on the concept, and the
choice of parameters, where "ESD-x" fine-tunes only the cross-attention.

What is implemented
-------------------
``theta*`` is a frozen copy of the UNet, ``theta`` the UNet of ``pipe``, of
which only the cross-attention (``attn2``) parameters are trained. Each
iteration:

1. pick a concept (round robin) and an index ``k`` uniformly in
   ``[0, ddim_steps)``;
2. draw ``x_T ~ N(0, I)`` and run the pipeline's own sampler for ``k`` steps
   of a ``ddim_steps`` schedule with prompt ``c`` and guidance
   ``sample_guidance``, stopping it there (``callback_on_step_end``); this
   gives ``x_t`` at ``t = timesteps[k]``;
3. the paper's negatively guided target,
   ``eps_theta*(x_t, t) - eta * (eps_theta*(x_t, c, t) - eps_theta*(x_t, t))``,
   from the frozen copy (unconditional = the empty prompt);
4. one Adam step on ``|| eps_theta(x_t, c, t) - target ||^2``.

Settings: the paper trains 1000 iterations with Adam at lr 1e-5 and
``eta = 1``. The defaults here are scaled to ShapeWorld: 300 iterations at
lr 3e-5 (the same bound ``lr * steps`` on how far Adam moves each weight).
``x_t`` is sampled with the model being edited, as the paper's loop does
(``sample_with="student"``); ``"frozen"`` samples with the frozen copy.
Sampling uses guidance 3.0 and the loss is taken at the sampler's own
timestep ``timesteps[k]`` (our choices: the text fixes neither).
Everything random comes from one generator seeded with ``seed``, so two runs
with the same seed give identical weights. Several concepts share one
training run, cycling through them. ``preserve`` is accepted for interface
compatibility and ignored (ESD has no preservation term). The trained
weights are returned as a :class:`fia.delta.WeightDelta` and the
pipeline's own weights are put back.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from fia.baselines import _common
from fia.config import check_nonnegative, check_positive_int
from fia.defaults import SD_SAMPLER
from fia.delta import WeightDelta
from fia.errors import FIAError
from fia.progress import Progress, report
from fia.targets import find_targets
from fia.sampling import first_steps

SAMPLE_WITH = ("student", "frozen")


@dataclass(frozen=True)
class ESDConfig:
    """Settings of ESD-x.

    Attributes:
        train_steps: optimisation iterations (paper: 1000; scaled to ShapeWorld).
        lr: Adam learning rate (paper: 1e-5; scaled to ShapeWorld).
        eta: negative guidance strength ``eta`` of the target.
        ddim_steps: length of the sampling schedule ``t`` is drawn from.
        sample_guidance: classifier-free guidance used while sampling ``x_t``.
        sample_with: which model samples ``x_t``: the ``student`` being
            edited or the ``frozen`` original.
        seed: seeds every random draw.
    """

    train_steps: int = 300
    lr: float = 3e-5
    eta: float = 1.0
    ddim_steps: int = SD_SAMPLER.num_inference_steps  # Stable Diffusion's schedule
    sample_guidance: float = 3.0
    sample_with: Literal["student", "frozen"] = "student"
    seed: int = 0

    def validate(self) -> ESDConfig:
        check_positive_int("train_steps", self.train_steps)
        check_positive_int("ddim_steps", self.ddim_steps)
        if not isinstance(self.lr, (int, float)) or not (self.lr > 0) or self.lr == float("inf"):
            raise FIAError(f"lr must be a finite number > 0, got {self.lr!r}")
        check_nonnegative("eta", self.eta)
        check_nonnegative("sample_guidance", self.sample_guidance)
        if self.sample_with not in SAMPLE_WITH:
            raise FIAError(f"unknown sample_with {self.sample_with!r}; use one of: {', '.join(SAMPLE_WITH)}")
        return self

    def replace(self, **changes: Any) -> ESDConfig:
        return replace(self, **changes).validate()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def trainable_names(unet: torch.nn.Module) -> list[str]:
    """Names of the parameters ESD-x trains: those of every text cross-attention (``attn2``)."""
    # find_targets names attn2's key/value projections; their parent is the attention module
    prefixes = tuple(sorted({t.name.rsplit(".", 1)[0] + "." for t in find_targets(unet, "attn_kv")}))
    return [n for n, _ in unet.named_parameters() if n.startswith(prefixes)]


def _sample_x_t(pipe: Any, unet: Any, x_T, k: int, cond, uncond, config: ESDConfig, gen):
    """``x`` after ``k`` sampler steps from ``x_T`` (``k = 0``: ``x_T`` itself)."""
    if k == 0:
        return x_T
    original = pipe.unet
    if unet is not original:
        pipe.unet = unet
    try:
        return first_steps(
            pipe,
            k,
            config.ddim_steps,
            prompt_embeds=cond,
            negative_prompt_embeds=uncond,
            guidance_scale=config.sample_guidance,
            latents=x_T.clone(),
            generator=gen,
        )
    finally:
        if pipe.unet is not original:
            pipe.unet = original


def _esd_loss(pipe: Any, unet: Any, frozen: Any, c_emb: Tensor, u_emb: Tensor, latent_shape: tuple, config: ESDConfig,
              gen: torch.Generator, device: Any) -> Tensor:
    """One ESD-x step's loss: at a random step ``k`` of the sampler's schedule, the trained UNet's noise
    prediction for ``c`` against the frozen one's negatively guided target ``e_u - eta (e_c - e_u)``."""
    scheduler = pipe.scheduler
    k = int(torch.randint(config.ddim_steps, (1,), generator=gen))
    x_T = torch.randn(latent_shape, generator=gen).to(device, dtype=c_emb.dtype)
    x_T = x_T * scheduler.init_noise_sigma
    sampler = frozen if config.sample_with == "frozen" else unet
    x_t = _sample_x_t(pipe, sampler, x_T, k, c_emb, u_emb, config, gen)
    scheduler.set_timesteps(config.ddim_steps, device=device)
    t = scheduler.timesteps[k]
    model_in = scheduler.scale_model_input(x_t, t) if hasattr(scheduler, "scale_model_input") else x_t
    with torch.no_grad():
        e_both = frozen(torch.cat([model_in, model_in]), t, encoder_hidden_states=torch.cat([u_emb, c_emb])).sample
        e_u, e_c = e_both.chunk(2)
        target = e_u - config.eta * (e_c - e_u)
    pred = unet(model_in, t, encoder_hidden_states=c_emb).sample
    return F.mse_loss(pred.float(), target.float())


def unlearn(
    pipe: Any,
    concepts: Sequence[str],
    config: ESDConfig | None = None,
    *,
    preserve: Sequence[str] = (),
    prompts: Mapping[str, str] | None = None,
    progress: Progress | None = None,
    cache_dir: Any = None,
) -> WeightDelta:
    """ESD-x's edit of ``pipe``'s cross-attention that erases ``concepts``.

    Registered as ``esd-x``: call it through :func:`fia.unlearn`, which
    checks the names and the config. Training runs on ``pipe``'s own UNet
    and its weights are put back before returning, so ``pipe`` ends as it
    started (also when training fails); the change is the returned
    :class:`fia.delta.WeightDelta`, whose ``stats["losses"]`` holds the
    loss per step. ``prompts`` maps a concept to the text ``c`` it is
    trained on (default: the concept's name, as in the paper).
    ``preserve`` is ignored (ESD has no preservation term).
    """
    config = config or ESDConfig()
    prompts = dict(prompts or {})
    unet = pipe.unet
    if getattr(unet.config, "addition_embed_type", None) is not None:
        raise FIAError("ESD-x here supports UNets without added conditions (SD 1.x/2.x), not SD XL")
    device = _common.execution_device(pipe)
    names = trainable_names(unet)
    params = dict(unet.named_parameters())
    before = {n: params[n].detach().clone() for n in names}
    flags = {n: p.requires_grad for n, p in params.items()}
    was_training = unet.training

    frozen = copy.deepcopy(unet).eval().requires_grad_(False)
    # a text given for a concept replaces its name; prompt sets made for other methods
    # (fia.prompts.ConceptPrompts) do not apply: ESD-x trains on one text per concept
    texts = [given if isinstance(given := prompts.get(c), str) else c for c in concepts]
    cond = _common.text_embeddings(pipe, texts)  # (C, L, d)
    uncond = _common.text_embeddings(pipe, [""])  # (1, L, d)
    gen = torch.Generator(device="cpu").manual_seed(config.seed)
    size = unet.config.sample_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    latent_shape = (1, unet.config.in_channels, height, width)
    losses: list[float] = []
    for n, p in params.items():
        p.requires_grad_(n in set(names))
    unet.eval()  # dropout off: the edit is deterministic given the seed
    optimizer = torch.optim.Adam([params[n] for n in names], lr=config.lr)
    try:
        for step in range(config.train_steps):
            ci = step % len(concepts)
            loss = _esd_loss(pipe, unet, frozen, cond[ci : ci + 1], uncond, latent_shape, config, gen, device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = loss.detach().item()
            losses.append(value)
            report(progress, step + 1, config.train_steps, f"ESD-x: step {step + 1}, loss {value:.4g}")
        after = {n: params[n].detach().clone() for n in names}
    finally:
        optimizer.zero_grad(set_to_none=True)
        for n, p in params.items():
            p.requires_grad_(flags[n])
            p.grad = None
        unet.train(was_training)
        del frozen
        with torch.no_grad():  # the trained weights live on in the delta, not in pipe
            for n in names:
                params[n].copy_(before[n])
    return WeightDelta.from_models(
        before, after, method="esd-x", concepts=list(concepts), config=config.to_dict(), stats={"losses": losses}
    )
