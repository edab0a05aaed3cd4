"""What the probes do with a Stable Diffusion 1.x/2.x pipeline: encode, draw, noise, denoise, differentiate.

Token slots. Prompt-attack's prepended tokens and textual inversion's new
token are *slots*: positions of the token sequence whose input embedding is
replaced, for one text-encoder call, by a vector of ours. A forward hook on
the text encoder's token-embedding layer does the replacement, so neither the
tokenizer nor any weight of the pipeline ever changes; the slot's token id is
a placeholder whose own embedding is never used.

Denoising loss. For clean latents ``z0`` (the unedited model's concept
images), a timestep ``t`` drawn uniformly from the training schedule and
noise ``n``::

    z_t  = sqrt(abar_t) z0 + sqrt(1 - abar_t) n
    L    = || f(z_t, t, c) - y_t ||^2 / d

with ``y_t`` the denoiser's training target (``n`` for epsilon prediction,
``sqrt(abar_t) n - sqrt(1 - abar_t) z0`` for v-prediction, ``z0`` for
sample prediction), ``f`` the denoiser of the model under attack and ``c``
the text condition. A condition that makes ``L`` small on the concept's
images is one under which the model can draw them again: both the prompt
attack (UnlearnDiffAtk) and textual inversion minimise it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from fia.defaults import SD_SAMPLER
from fia.errors import FIAError
from fia.sampling import capture, generators

# Stable Diffusion's sampler settings, used when the config names none
SD_STEPS, SD_GUIDANCE = SD_SAMPLER.num_inference_steps, SD_SAMPLER.guidance_scale


def completion_steps(num_inference_steps: int, level: float) -> int:
    """How many of ``num_inference_steps`` sampler steps remain from noise level ``level`` (at least 1).

    As diffusers' image-to-image ``strength``: starting at ``level`` of the
    schedule leaves the last ``round(level * N)`` of its ``N`` steps.
    """
    return max(1, min(num_inference_steps, int(round(level * num_inference_steps))))


def check_pipeline(pipe: Any) -> None:
    """Refuse a pipeline the probes cannot drive (they need SD 1.x/2.x parts)."""
    parts = ("tokenizer", "text_encoder", "unet", "vae", "scheduler")
    missing = [p for p in parts if getattr(pipe, p, None) is None]
    extra = getattr(getattr(pipe, "unet", None), "config", None)
    if missing or getattr(pipe, "text_encoder_2", None) is not None or getattr(extra, "addition_embed_type", None):
        raise FIAError(
            f"the attack runs on Stable Diffusion 1.x/2.x-style pipelines (one text encoder, a UNet); "
            f"{type(pipe).__name__} is not one"
        )


@contextmanager
def frozen(*modules: torch.nn.Module) -> Iterator[None]:
    """No parameter of ``modules`` takes a gradient inside the block; the flags are restored after it."""
    flags = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class AttackModel:
    """One pipeline seen by the probes (see the module docstring)."""

    def __init__(self, pipe: Any, *, num_inference_steps: int | None, guidance_scale: float | None, batch_size: int):
        check_pipeline(pipe)
        self.pipe = pipe
        self.unet = pipe.unet
        self.tokenizer = pipe.tokenizer
        self.text_encoder = pipe.text_encoder
        self.steps = int(num_inference_steps or SD_STEPS)
        self.guidance = float(SD_GUIDANCE if guidance_scale is None else guidance_scale)
        self.batch_size = batch_size
        self.device = next(self.unet.parameters()).device
        self.dtype = next(self.unet.parameters()).dtype
        tok = self.tokenizer
        self.max_length = int(tok.model_max_length)
        self.special_ids = {int(i) for i in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) if i is not None}
        self.special_ids |= {int(i) for i in getattr(tok, "all_special_ids", [])}

    # ------------------------------------------------------------ vocabulary
    @property
    def token_table(self) -> Tensor:
        """The text encoder's token embeddings ``(V, D)`` (detached)."""
        return self.text_encoder.get_input_embeddings().weight.detach()

    def ordinary_ids(self) -> Tensor:
        """Ids of every token that is not special (begin, end, padding): what a prompt may contain."""
        n = self.token_table.shape[0]
        keep = torch.ones(n, dtype=torch.bool)
        keep[[i for i in self.special_ids if i < n]] = False
        return torch.nonzero(keep).reshape(-1)

    # ---------------------------------------------------------------- tokens
    def _words(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids) if text.strip() else []

    def token_ids(self, text: str, *, prefix: Sequence[int] = (), slot_id: int | None = None) -> tuple[list[int], list[int]]:
        """``(ids, slot positions)`` of ``text`` with ``prefix`` ids prepended and :data:`MARKER` as slots.

        ``ids`` is padded to the tokenizer's length; each ``<*>`` in ``text``
        becomes one slot holding ``slot_id``, and so does each prefix entry
        given as ``None``.
        """
        from fia.attack.texts import MARKER

        filler = int(slot_id if slot_id is not None else self.ordinary_ids()[0])
        tok = self.tokenizer
        ids, slots = [int(tok.bos_token_id)], []
        for p in prefix:
            if p is None:
                slots.append(len(ids))
            ids.append(filler if p is None else int(p))
        parts = text.split(MARKER)
        for n, part in enumerate(parts):
            ids += self._words(part)
            if n < len(parts) - 1:
                slots.append(len(ids))
                ids.append(filler)
        ids.append(int(tok.eos_token_id))
        if len(ids) > self.max_length:
            raise FIAError(
                f"the prompt {text!r} with {len(prefix)} added token(s) takes {len(ids)} tokens, more than the "
                f"model's {self.max_length}; use a shorter prompt or fewer tokens"
            )
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return ids + [int(pad)] * (self.max_length - len(ids)), slots

    def encode_ids(self, ids: Tensor, slots: Tensor | None = None, vectors: Tensor | None = None) -> Tensor:
        """Text-encoder hidden states ``(B, L, D)`` of token ids ``(B, L)``; ``vectors`` fill the ``slots`` mask.

        ``slots`` is a bool ``(B, L)`` mask; ``vectors`` has one row per True
        entry, in row-major order. Gradients flow back to ``vectors``.
        """
        if slots is None or vectors is None:
            return self.text_encoder(ids.to(self.device))[0]
        mask = slots.to(self.device)

        def fill_slots(_name: str, _module: Any, _args: Any, output: Tensor) -> Tensor:
            out = output.clone()
            out[mask] = vectors.to(device=out.device, dtype=out.dtype)
            return out  # a hook's return value replaces the layer's output

        with capture({"token_embedding": self.text_encoder.get_input_embeddings()}, fill_slots):
            return self.text_encoder(ids.to(self.device))[0]

    def encode(self, texts: Sequence[str]) -> Tensor:
        """Prompt embeddings of plain texts, as the pipeline encodes them (truncated to the model's length)."""
        tok = self.tokenizer(
            list(texts), padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        )
        with torch.no_grad():
            return self.text_encoder(tok.input_ids.to(self.device))[0]

    def encode_with_slots(self, texts: Sequence[str], vectors: Tensor, prefix: Sequence[int | None] = ()) -> Tensor:
        """Embeddings of ``texts`` whose slots (``<*>`` and ``None`` prefix entries) hold ``vectors`` (one row per slot of a text)."""
        rows = [self.token_ids(t, prefix=prefix) for t in texts]
        ids = torch.tensor([r[0] for r in rows])
        mask = torch.zeros_like(ids, dtype=torch.bool)
        for b, (_, slots) in enumerate(rows):
            if len(slots) != len(vectors):
                raise FIAError(f"{texts[b]!r} has {len(slots)} token slot(s) where {len(vectors)} were learned")
            mask[b, slots] = True
        return self.encode_ids(ids, mask, vectors.repeat(len(texts), 1))

    # --------------------------------------------------------------- drawing
    def _chunks(self, n: int) -> list[slice]:
        return [slice(i, min(n, i + self.batch_size)) for i in range(0, n, self.batch_size)]

    def draw(self, cond: Tensor, seeds: Sequence[int], *, output_type: str = "pt") -> Tensor:
        """The pipeline's own sampler on prompt embeddings ``cond`` (one seed per row): images in [0, 1] or latents."""
        out = []
        uncond = self.encode([""])
        for sl in self._chunks(len(seeds)):
            c = cond[sl].detach()
            with torch.no_grad():
                res = self.pipe(
                    prompt_embeds=c,
                    negative_prompt_embeds=uncond.expand(len(c), -1, -1),
                    generator=generators(seeds[sl]),
                    num_inference_steps=self.steps,
                    guidance_scale=self.guidance,
                    output_type=output_type,
                ).images
            out.append(torch.as_tensor(res).float().cpu())
        return torch.cat(out)

    def latents_of(self, texts: Sequence[str], seeds: Sequence[int]) -> Tensor:
        """Final latents of ``texts`` drawn from ``seeds`` (the images before decoding), on the model's device."""
        return self.draw(self.encode(texts), seeds, output_type="latent").to(self.device, self.dtype)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Latents -> images ``(B, 3, H, W)`` in [0, 1]."""
        vae = self.pipe.vae
        out = []
        for sl in self._chunks(len(latents)):
            x = vae.decode(latents[sl].to(self.device, vae.dtype) / vae.config.scaling_factor).sample
            out.append((x.float() / 2 + 0.5).clamp(0, 1).cpu())
        return torch.cat(out)

    # -------------------------------------------------------------- training
    def training_target(self, z0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        sched = self.pipe.scheduler
        kind = sched.config.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "v_prediction":
            return sched.get_velocity(z0, noise, t)
        if kind == "sample":
            return z0
        raise FIAError(f"the scheduler predicts {kind!r}, which the attack does not know; use an SD 1.x/2.x scheduler")

    def denoising_loss(self, z0: Tensor, cond: Tensor, generator: torch.Generator) -> Tensor:
        """The module docstring's ``L``, averaged over the batch; ``t`` and noise from ``generator`` (CPU)."""
        sched = self.pipe.scheduler
        n_train = int(sched.config.num_train_timesteps)
        t = torch.randint(0, n_train, (len(z0),), generator=generator).to(self.device)
        noise = torch.randn(z0.shape, generator=generator, dtype=torch.float32).to(self.device, z0.dtype)
        zt = sched.add_noise(z0, noise, t)
        pred = self.unet(zt, t, encoder_hidden_states=cond.to(self.dtype)).sample
        target = self.training_target(z0, noise, t)
        return (pred.float() - target.float()).pow(2).mean()

    # ------------------------------------------------------------ completion
    @torch.no_grad()
    def complete(self, z0: Tensor, cond: Tensor, level: float, seeds: Sequence[int]) -> Tensor:
        """Noise clean latents ``z0`` to ``level`` of the schedule, then let this model finish sampling.

        The schedule of :attr:`steps` steps is cut as diffusers' image-to-image
        cuts it: the latents are noised to the first of its last
        :func:`completion_steps` timesteps (noise from ``seeds``, one per
        row) and denoised through those steps with classifier-free guidance.
        """
        sched = copy.deepcopy(self.pipe.scheduler)
        sched.set_timesteps(self.steps, device=self.device)
        run = completion_steps(self.steps, level)
        timesteps = sched.timesteps[len(sched.timesteps) - run :]
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(len(sched.timesteps) - run)
        uncond = self.encode([""])
        out = []
        for sl in self._chunks(len(z0)):
            z, c = z0[sl], cond[sl]
            noise = torch.stack([torch.randn(z.shape[1:], generator=g) for g in generators(seeds[sl])]).to(z)
            lat = sched.add_noise(z, noise, timesteps[:1].repeat(len(z)))
            emb = torch.cat([uncond.expand(len(z), -1, -1), c]).to(self.dtype)
            for t in timesteps:
                inp = sched.scale_model_input(torch.cat([lat, lat]), t)
                u, v = self.unet(inp, t, encoder_hidden_states=emb).sample.chunk(2)
                lat = sched.step(u + self.guidance * (v - u), t, lat).prev_sample
            out.append(lat)
        return torch.cat(out)


def embedding_scale(table: Tensor) -> float:
    """The standard deviation of token-embedding entries: the unit of the probes' learning rates."""
    return float(table.float().std()) or 1.0 / math.sqrt(table.shape[1])
