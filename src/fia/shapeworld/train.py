"""Rebuilding every shipped ShapeWorld artifact from a seed.

Stages, each checked before the next:

1. data: N renders with their scene factors (captions are re-drawn from the
   templates at every step);
2. VAE: an ``AutoencoderKL`` with a factor-4 latent (32x32x3 -> 8x8x8);
3. oracle: trained on clean renders and on their VAE reconstructions (it
   judges decoded images, so it learns on them), checked on fresh renders;
4. the second judge (:mod:`.second_judge`): another architecture and seed,
   trained on clean renders alone with blur, noise, colour and crop
   augmentations, checked on fresh renders;
5. latents: the VAE's posterior means, scaled to unit variance (the scaling
   factor goes into the VAE config);
6. UNet + text encoder, trained together from scratch: DDPM noise on a
   zero-terminal-SNR schedule, v-prediction, 10 % empty captions for
   classifier-free guidance, AdamW with warm-up and cosine decay, EMA weights
   for sampling; the oracle probes generations along the way;
7. the quality gate on held-out prompts, read by both judges; the pipeline is
   saved with a DDIM scheduler (``clip_sample=False``).

The second world (``world="shapeworld2"``, :meth:`TrainConfig.shapeworld2`)
is trained the way Stable Diffusion was: a CLIP (:mod:`.clip`) is trained
first, contrastively, on the renders and their captions; its text encoder is
then frozen and conditions the UNet (stage 6 trains the UNet alone). The
oracle learns from its own kind-balanced renders (a judge's data need not
follow the world's long tail: the rarest kinds would give it 0.5 % of its
examples), gets a reject option calibrated on object-less renders, and the
gate adds CLIP scores and the CLIP style judge. The CLIP ships in ``clip/``.

The output folder holds exactly what ships: ``pipeline/``, the oracle,
``judge2/`` (the second judge and its quality report), the recipe and the
quality report; ``.work/`` holds resumable intermediates.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .clip import ShapeWorldCLIP, caption_targets, infonce_loss, text_encoder_config
from .evaluate import render_accuracy
from .oracle import HEADS, Oracle, heads_for
from .render import SIZE, Scene, caption, object_coverage, render, sample_scene
from .second_judge import SecondJudge
from .vocab import SHAPEWORLD, UNKNOWN_KINDS, World, get_world

# Stable Diffusion's scaled-linear betas, rescaled to a zero terminal SNR, with
# v-prediction and "trailing" sampling that starts at t = 999. With the
# unrescaled schedule the last training step still leaks 7 % of the clean
# latent, so the model learns to read the background (most of a ShapeWorld
# image) from that leak; sampling from pure noise then draws every place as
# the mean background colour (oracle place agreement 27 %).
SCHEDULER_KW = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    prediction_type="v_prediction",
    rescale_betas_zero_snr=True,
    timestep_spacing="trailing",
)


@dataclass
class TrainConfig:
    seed: int = 0
    # 16,000 UNet steps of batch 32 see 512,000 captioned images: 60,000
    # distinct scenes keep that to about 9 passes over the data
    n_images: int = 60000
    # VAE: factor 4 (three blocks) with 8 latent channels. On an 8x8x8 latent
    # a UNet step at batch 32 costs 0.16 s on 2 idle cores, so the budget buys
    # 16,000 steps (42 minutes); the whole recipe takes 47.
    vae_channels: tuple = (32, 64, 64)
    vae_latent_channels: int = 8
    vae_steps: int = 1000
    vae_batch: int = 16
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-6
    # oracle
    oracle_width: int = 32
    oracle_steps: int = 2000
    oracle_batch: int = 48
    oracle_recon_images: int = 6000  # reconstructions of the first N renders join the oracle's data
    oracle_lr: float = 2e-3
    # 0: the oracle learns from the world's data (its kinds at the world's
    # shares); n: from n scenes of its own, every kind and the object-less
    # scene equally likely (its reconstructions are of the first
    # oracle_recon_images of those)
    oracle_balanced_images: int = 0
    # second judge (fia.shapeworld.second_judge): another architecture and
    # seed, trained on clean renders alone; the augmentations (blur up to
    # judge2_blur px sigma, a 16-px bottleneck for a judge2_soft share, pixel
    # noise up to judge2_noise, colour jitter of about judge2_jitter, crops up
    # to judge2_crop px smaller) stand in for a VAE decoder's softness
    judge2_widths: tuple = (16, 32, 64, 80)
    judge2_feature_dim: int = 128
    judge2_steps: int = 7000
    judge2_batch: int = 64
    judge2_lr: float = 3e-3
    judge2_weight_decay: float = 0.05
    judge2_blur: float = 1.0
    judge2_soft: float = 0.2
    judge2_noise: float = 0.05
    judge2_jitter: float = 0.06
    judge2_crop: int = 4
    # text encoder
    text_hidden: int = 128
    text_layers: int = 3
    text_heads: int = 4
    # UNet
    # 8x8 -> 4x4 -> 2x2: cross-attention (with its FFN) at 8x8 and 4x4 in both
    # paths and in the middle block: 7 FFN2 layers
    unet_channels: tuple = (64, 96, 128)
    unet_down: tuple = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    unet_up: tuple = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    unet_layers_per_block: int = 1
    unet_heads: int = 4
    unet_steps: int = 16000
    unet_batch: int = 32
    unet_lr: float = 1e-3
    unet_warmup: int = 200
    unet_min_lr_ratio: float = 0.05
    ema_decay: float = 0.999
    min_snr_gamma: float = 0.0  # 0: plain v-MSE
    # extra loss weight on the latent pixels an object covers (0: uniform).
    # The background fills about 70 % of an image and is learnt early; the
    # shape is what the prompts ask for. Weighting pixels moves capacity, not
    # the target: each pixel's optimum is still its conditional mean. Measured:
    # it speeds shape learning (held-out probe 0.93 against 0.80 at step 6,000)
    # and ends about level (gate object 0.99 against 0.98 at step 16,000).
    object_loss_weight: float = 3.0
    caption_dropout: float = 0.1
    probe_every: int = 2000
    probe_prompts: int = 40
    gate_limit: int = 0  # 0: the whole gate; n: its first n images (quick runs only)
    threads: int = 2
    extra: dict = field(default_factory=dict)
    # the world (fia.shapeworld.vocab.WORLDS) whose scenes, captions and heads are trained
    world: str = "shapeworld"
    # CLIP (fia.shapeworld.clip). 0 steps: no CLIP, the text encoder trains
    # with the UNet; otherwise the CLIP trains first and its frozen text
    # encoder (text_hidden, text_layers, text_heads) conditions the UNet.
    clip_steps: int = 0
    clip_batch: int = 128
    clip_lr: float = 2e-3
    clip_warmup: int = 100
    clip_embed_dim: int = 64
    clip_image_width: int = 32
    clip_augment: float = 0.5  # share of a batch seen through judge_augment (the decoder's softness)
    # the oracle's reject option: None: none; else the share of held-out
    # object-less renders (and their reconstructions) allowed to get a kind
    reject_false_accept_rate: float | None = None
    reject_calibration_images: int = 1000

    @classmethod
    def shapeworld2(cls, seed: int = 0) -> TrainConfig:
        """The second world's recipe (see the module docstring)."""
        return cls(
            seed=seed,
            world="shapeworld2",
            # 100,000 scenes: the rarest kinds (0.5 %) still get 500 distinct renders
            n_images=100_000,
            clip_steps=SHAPEWORLD2_STEPS["clip"],
            oracle_steps=SHAPEWORLD2_STEPS["oracle"],
            oracle_balanced_images=40_000,
            unet_steps=SHAPEWORLD2_STEPS["unet"],
            reject_false_accept_rate=0.01,
        )

    @classmethod
    def quick(cls, seed: int = 0, world: str = "shapeworld") -> TrainConfig:
        """A few steps of every stage of ``world``'s recipe, to check it end to end."""
        if get_world(world) is not SHAPEWORLD:
            return cls.quick_shapeworld2(seed)
        return cls(
            seed=seed,
            n_images=400,
            oracle_recon_images=100,
            vae_steps=4,
            vae_batch=8,
            oracle_steps=4,
            oracle_batch=8,
            judge2_steps=4,
            judge2_batch=8,
            unet_steps=6,
            unet_batch=8,
            unet_warmup=2,
            probe_every=3,
            probe_prompts=4,
            gate_limit=8,
        )

    @classmethod
    def quick_shapeworld2(cls, seed: int = 0) -> TrainConfig:
        full = cls.shapeworld2(seed)
        return cls(
            **{
                **asdict(cls.quick(seed)),
                "world": full.world,
                "reject_false_accept_rate": full.reject_false_accept_rate,
                "clip_steps": 4,
                "clip_batch": 16,
                "clip_warmup": 2,
                "reject_calibration_images": 40,
                "oracle_balanced_images": 200,
                "threads": 1,
            }
        )


# The second world's step counts. Timed against the first world's stages
# (whose 2-core seconds the shipped recipe.json records) under the same load,
# they come to about 87 minutes on 2 idle cores, 66 of them the UNet's
# (docs/shapeworld2.md has the table).
SHAPEWORLD2_STEPS = {"clip": 3000, "oracle": 3000, "unet": 28000}


def _log(msg: str, log: Callable[[str], None] | None) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    (log or print)(line)


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N,H,W,3) -> float (N,3,H,W) in [0,1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)


def _lr_lambda(warmup: int, total: int, min_ratio: float):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        p = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p))

    return f


def _clipped_step(opt, sched, loss: torch.Tensor, params) -> None:
    """One optimiser and schedule step on ``loss``, gradients clipped to norm 1."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()


# ------------------------------------------------------------------ stages


def make_data(n: int, seed: int, world: World = SHAPEWORLD, **fixed) -> tuple[list[Scene], np.ndarray]:
    """``n`` random scenes of ``world`` and their renders (``fixed``: factors
    passed to :func:`sample_scene`, e.g. ``object=None``)."""
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, world=world, **fixed) for _ in range(n)]
    images = np.stack([render(s) for s in scenes])
    return scenes, images


def make_balanced_data(n: int, seed: int, world: World) -> tuple[list[Scene], np.ndarray]:
    """``n`` random scenes of ``world`` whose object is drawn uniformly from
    its kinds and "none" (one draw each), every other factor as in
    :func:`make_data`, and their renders."""
    rng = np.random.default_rng(seed)
    kinds: list[str | None] = [*world.object_names, None]
    scenes = [sample_scene(rng, object=kinds[int(rng.integers(len(kinds)))], world=world) for _ in range(n)]
    return scenes, np.stack([render(s) for s in scenes])


def labels(scenes: list[Scene], heads: dict[str, tuple[str, ...]] = HEADS) -> dict[str, torch.Tensor]:
    """Each scene's label index per head (-100: no label)."""
    out = {k: [] for k in heads}
    for s in scenes:
        out["object"].append(heads["object"].index(s.object or "none"))
        out["color"].append(heads["color"].index(s.color) if s.color else -100)
        out["place"].append(heads["place"].index(s.place))
        out["style"].append(heads["style"].index(s.style or "none"))
        out["attribute"].append(heads["attribute"].index(s.attribute or "absent"))
    return {k: torch.tensor(v) for k, v in out.items()}


def object_weight_maps(scenes: list[Scene], factor: int, extra: float) -> torch.Tensor:
    """Per-latent-pixel loss weights (N, 1, H/f, W/f): ``1 + extra * share``,
    where ``share`` is the part of a latent pixel's patch covered by the
    object or its 1-pixel outline."""
    cov = torch.from_numpy(np.stack([object_coverage(s) for s in scenes]))[:, None]
    body = F.max_pool2d(cov, 3, stride=1, padding=1)  # the outline belongs to the shape
    share = F.avg_pool2d(body, factor)
    return 1.0 + extra * share


def make_vae(cfg: TrainConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.vae_channels),
        layers_per_block=1,
        latent_channels=cfg.vae_latent_channels,
        norm_num_groups=32,
        sample_size=32,
        mid_block_add_attention=False,
    )


def train_vae(cfg: TrainConfig, images: np.ndarray, log=None):
    torch.manual_seed(cfg.seed + 1)
    vae = make_vae(cfg)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(50, cfg.vae_steps, 0.05))
    rng = np.random.default_rng(cfg.seed + 1)
    t0 = time.time()
    for step in range(cfg.vae_steps):
        idx = rng.integers(len(images), size=cfg.vae_batch)
        x = _to_tensor(images[idx]) * 2 - 1
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        rec_loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x)
        kl = post.kl().mean() / x[0].numel()
        loss = rec_loss + cfg.vae_kl_weight * kl
        _clipped_step(opt, sched, loss, vae.parameters())
        if step % 100 == 0 or step == cfg.vae_steps - 1:
            _log(f"vae step {step}/{cfg.vae_steps} loss {rec_loss.item():.4f} ({time.time() - t0:.0f}s)", log)
    return vae.eval()


@torch.no_grad()
def encode_means(vae, images: np.ndarray, batch: int = 500) -> torch.Tensor:
    out = []
    for i in range(0, len(images), batch):
        x = _to_tensor(images[i : i + batch]) * 2 - 1
        out.append(vae.encode(x).latent_dist.mean)
    return torch.cat(out)


@torch.no_grad()
def decode(vae, latents: torch.Tensor, batch: int = 500) -> np.ndarray:
    """Unscaled latents -> uint8 images."""
    out = []
    for i in range(0, len(latents), batch):
        y = vae.decode(latents[i : i + batch]).sample
        y = ((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
        out.append(y.numpy())
    return np.concatenate(out)


def _judge_step(model, opt, sched, x: torch.Tensor, lab: dict, idx: np.ndarray) -> torch.Tensor:
    """One optimiser step of a judge on images ``x`` with the labels of scenes ``idx`` (every head)."""
    out = model(x)
    loss = sum(F.cross_entropy(out[k], lab[k][idx], ignore_index=-100) for k in model.HEADS)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return loss


def oracle_training_data(cfg: TrainConfig, vae, images: np.ndarray, means: torch.Tensor, lab: dict):
    """The oracle's renders, the VAE reconstructions of their first
    ``oracle_recon_images`` and their labels: the world's own data (``images``,
    their latent ``means`` and labels ``lab``) or, with
    ``oracle_balanced_images``, a kind-balanced set of its own."""
    if cfg.oracle_balanced_images:
        world = get_world(cfg.world)
        scenes, images = make_balanced_data(cfg.oracle_balanced_images, cfg.seed + 40_000, world)
        lab = labels(scenes, heads_for(world))
        means = encode_means(vae, images[: cfg.oracle_recon_images])
    return images, decode(vae, means[: cfg.oracle_recon_images]), lab


def train_oracle(cfg: TrainConfig, images: np.ndarray, recons: np.ndarray, lab: dict, log=None) -> Oracle:
    torch.manual_seed(cfg.seed + 2)
    model = Oracle(width=cfg.oracle_width, world=cfg.world)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.oracle_lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(50, cfg.oracle_steps, 0.02))
    rng = np.random.default_rng(cfg.seed + 2)
    model.train()
    t0 = time.time()
    for step in range(cfg.oracle_steps):
        # half clean renders, half VAE reconstructions (of the first len(recons) renders)
        half = cfg.oracle_batch // 2
        idx_c = rng.integers(len(images), size=cfg.oracle_batch - half)
        idx_r = rng.integers(len(recons), size=half)
        idx = np.concatenate([idx_c, idx_r])
        x = torch.cat([_to_tensor(images[idx_c]), _to_tensor(recons[idx_r])])
        # light pixel noise on a third of the batch
        noisy = torch.from_numpy(rng.random(cfg.oracle_batch) < 0.33)[:, None, None, None]
        sigma = torch.from_numpy(rng.uniform(0, 0.05, cfg.oracle_batch)).float()[:, None, None, None]
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        x = torch.where(noisy, (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1), x)
        loss = _judge_step(model, opt, sched, x, lab, idx)
        if step % 100 == 0 or step == cfg.oracle_steps - 1:
            _log(f"oracle step {step}/{cfg.oracle_steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)", log)
    return model.eval()


def judge_augment(x: torch.Tensor, cfg: TrainConfig, rng: np.random.Generator) -> torch.Tensor:
    """Random training views of clean renders (B, 3, 32, 32) in [0, 1] for
    the second judge: what a VAE decoder does to an image, roughly -- softer
    edges, slight colour shifts, grain, a shifted frame. Crop, blur,
    bottleneck and noise each hit a random part of the batch and colour
    jitter all of it, lightly, so near-clean renders stay in the mix."""
    b = len(x)
    g = torch.Generator().manual_seed(int(rng.integers(2**31)))

    def chosen(p: float) -> np.ndarray:
        return rng.random(b) < p

    def column(v: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(v).float()[:, None, None, None]

    # crop a square up to judge2_crop px smaller, anywhere, and resize it back
    # (identity sampling is exact for the others: pixel centres, bilinear)
    side = np.where(chosen(0.5), rng.uniform(1 - cfg.judge2_crop / SIZE, 1.0, b), 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = torch.from_numpy(side).float()
    theta[:, :, 2] = torch.from_numpy(rng.uniform(-1, 1, (b, 2)) * (1 - side)[:, None]).float()
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # Gaussian blur, a separable 5-tap kernel per image (sigma 0: identity)
    sigma = np.where(chosen(0.5), cfg.judge2_blur * rng.uniform(0.3, 1.0, b), 0.0)
    d = torch.arange(-2, 3, dtype=torch.float32)
    k = torch.exp(-(d[None] ** 2) / (2 * torch.from_numpy(sigma).float().clamp(min=1e-3)[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(3, 0)  # (B*3, 5)
    h = F.pad(x.reshape(1, b * 3, SIZE, SIZE), (2, 2, 2, 2), mode="reflect")
    h = F.conv2d(h, k[:, None, :, None], groups=b * 3)
    x = F.conv2d(h, k[:, None, None, :], groups=b * 3).reshape(b, 3, SIZE, SIZE)
    # a share of the views through a 16x16 bottleneck and back
    small = F.interpolate(x, size=(SIZE // 2, SIZE // 2), mode="bilinear", antialias=True, align_corners=False)
    soft = F.interpolate(small, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    x = torch.where(column(chosen(cfg.judge2_soft)) > 0, soft, x)
    # colour: brightness, contrast, saturation, per-channel gain
    j = cfg.judge2_jitter
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = mean + (x - mean) * column(rng.uniform(1 - 2 * j, 1 + 2 * j, b))
    gray = x.mean(dim=1, keepdim=True)
    x = gray + (x - gray) * column(rng.uniform(1 - 2 * j, 1 + 2 * j, b))
    x = x * torch.from_numpy(rng.uniform(1 - j, 1 + j, (b, 3))).float()[:, :, None, None]
    x = x + column(rng.uniform(-j, j, b))
    # pixel noise on half the batch
    sd = np.where(chosen(0.5), rng.uniform(0, cfg.judge2_noise, b), 0.0)
    x = x + column(sd) * torch.randn(x.shape, generator=g)
    return x.clamp(0, 1)


def train_second_judge(cfg: TrainConfig, images: np.ndarray, lab: dict, log=None) -> SecondJudge:
    """The second judge, trained on clean renders alone (augmented by
    :func:`judge_augment`) from its own seed."""
    torch.manual_seed(cfg.seed + 4)
    model = SecondJudge(widths=tuple(cfg.judge2_widths), feature_dim=cfg.judge2_feature_dim, world=cfg.world)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.judge2_lr, weight_decay=cfg.judge2_weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(100, cfg.judge2_steps, 0.01))
    rng = np.random.default_rng(cfg.seed + 4)
    model.train()
    t0 = time.time()
    for step in range(cfg.judge2_steps):
        idx = rng.integers(len(images), size=cfg.judge2_batch)
        x = judge_augment(_to_tensor(images[idx]), cfg, rng)
        loss = _judge_step(model, opt, sched, x, lab, idx)
        if step % 200 == 0 or step == cfg.judge2_steps - 1:
            _log(f"judge2 step {step}/{cfg.judge2_steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)", log)
    return model.eval()


def make_text_encoder(cfg: TrainConfig, tok):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**text_encoder_config(tok, cfg.text_hidden, cfg.text_layers, cfg.text_heads)))


def train_clip(cfg: TrainConfig, scenes: list[Scene], images: np.ndarray, tok, log=None) -> ShapeWorldCLIP:
    """The CLIP: symmetric InfoNCE (:func:`fia.shapeworld.clip.infonce_loss`)
    between renders and captions drawn afresh at every step, repeated
    captions in a batch sharing their targets; a ``clip_augment`` share of
    the images is seen through :func:`judge_augment`, so that the image
    encoder also reads decoded, softer images. AdamW with warm-up and cosine
    decay; no weight decay on the logit scale."""
    world = get_world(cfg.world)
    torch.manual_seed(cfg.seed + 5)
    clip = ShapeWorldCLIP(
        text_encoder_config(tok, cfg.text_hidden, cfg.text_layers, cfg.text_heads),
        embed_dim=cfg.clip_embed_dim,
        image_width=cfg.clip_image_width,
        world=world.name,
    )
    clip.tokenizer = tok
    decayed = [p for n, p in clip.named_parameters() if n != "logit_scale"]
    opt = torch.optim.AdamW(
        [{"params": decayed, "weight_decay": 0.01}, {"params": [clip.logit_scale], "weight_decay": 0.0}], lr=cfg.clip_lr
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.clip_warmup, cfg.clip_steps, 0.05))
    rng = np.random.default_rng(cfg.seed + 5)
    clip.train()
    t0 = time.time()
    for step in range(cfg.clip_steps):
        idx = rng.integers(len(images), size=cfg.clip_batch)
        caps = [caption(scenes[i], rng, world=world) for i in idx]
        x = _to_tensor(images[idx])
        seen = torch.from_numpy(rng.random(len(idx)) < cfg.clip_augment)[:, None, None, None]
        x = torch.where(seen, judge_augment(x, cfg, rng), x)
        loss = infonce_loss(clip(x, clip.token_ids(caps)), caption_targets(caps))
        _clipped_step(opt, sched, loss, clip.parameters())
        if step % 100 == 0 or step == cfg.clip_steps - 1:
            _log(f"clip step {step}/{cfg.clip_steps} loss {loss.item():.4f} scale {clip.scale().item():.1f} ({time.time() - t0:.0f}s)", log)
    return clip.eval()


def make_unet(cfg: TrainConfig):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=SIZE // 2 ** (len(cfg.vae_channels) - 1),
        in_channels=cfg.vae_latent_channels,
        out_channels=cfg.vae_latent_channels,
        down_block_types=tuple(cfg.unet_down),
        up_block_types=tuple(cfg.unet_up),
        block_out_channels=tuple(cfg.unet_channels),
        layers_per_block=cfg.unet_layers_per_block,
        cross_attention_dim=cfg.text_hidden,
        attention_head_dim=cfg.unet_heads,
        norm_num_groups=32,
    )


def build_pipeline(vae, text_encoder, tokenizer, unet):
    """The shipped pipeline from its parts: DDIM on the training schedule, no safety checker, no progress bar."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    scheduler = DDIMScheduler(**SCHEDULER_KW, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach(), 1 - decay)


def probe(pipe, oracle, n_prompts: int = 40) -> dict:
    """Oracle agreement on the first ``n_prompts`` held-out triples of the oracle's world, one seed each."""
    from .evaluate import agreement, generate
    from .render import prompt_for

    triples = oracle.world.heldout_triples()
    # every k-th triple, so that the probe spans the kinds (4 triples per kind)
    prompts = [prompt_for(o, c, p) for c, o, p in triples[:: max(1, len(triples) // n_prompts)]][:n_prompts]
    seeds = list(range(len(prompts)))
    images = generate(pipe, prompts, seeds)
    return agreement(oracle, images, prompts)


def _timestep_weights(cfg, noise_sched) -> Tensor:
    """The loss weight of each training timestep.

    Plain v-MSE by default; min-SNR-gamma for v-prediction is
    min(SNR, gamma) / (SNR + 1), which starves the high-noise steps that
    decide the background, so it is off unless min_snr_gamma > 0.
    """
    alphas = noise_sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    if cfg.min_snr_gamma > 0:
        return (snr.clamp(max=cfg.min_snr_gamma) / (snr + 1)).float()
    return torch.ones_like(snr, dtype=torch.float32)


def _probe_and_checkpoint(pipe, oracle, cfg, step: int, work: Path, log) -> dict:
    """Probe the EMA pipeline on held-out triples, log it and save it as the checkpoint; returns the history row."""
    res = probe(pipe, oracle, cfg.probe_prompts)
    _log(
        "probe (EMA, held-out triples) step {}: object {:.3f} color {:.3f} place {:.3f}".format(
            step, res["object"], res.get("color", 0), res.get("place", 0)
        ),
        log,
    )
    pipe.save_pretrained(str(work / "pipeline_ckpt"), safe_serialization=True)
    return {"step": step, **{k: v for k, v in res.items() if k != "object_per_class"}}


def train_unet(cfg, scenes, latents, vae, tok, oracle, work: Path, log=None, frozen_text_encoder=None):
    """The UNet (EMA weights returned), with a text encoder trained beside it,
    or conditioned on ``frozen_text_encoder`` (the CLIP's), which no step
    changes; returns (text encoder, UNet, probe history)."""
    from diffusers import DDPMScheduler

    world = get_world(cfg.world)
    torch.manual_seed(cfg.seed + 3)
    frozen = frozen_text_encoder is not None
    if frozen:
        text_encoder = frozen_text_encoder.eval().requires_grad_(False)
        unet = make_unet(cfg)
        ema_te, ema_unet = text_encoder, copy.deepcopy(unet).eval()
    else:
        text_encoder = make_text_encoder(cfg, tok)
        unet = make_unet(cfg)
        ema_te, ema_unet = copy.deepcopy(text_encoder).eval(), copy.deepcopy(unet).eval()
    for p in list(ema_te.parameters()) + list(ema_unet.parameters()):
        p.requires_grad_(False)
    noise_sched = DDPMScheduler(**SCHEDULER_KW)
    weights = _timestep_weights(cfg, noise_sched)
    params = list(unet.parameters()) + ([] if frozen else list(text_encoder.parameters()))
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.unet_warmup, cfg.unet_steps, cfg.unet_min_lr_ratio))
    pixel_weights = None
    if cfg.object_loss_weight > 0:
        factor = SIZE // latents.shape[-1]
        pixel_weights = object_weight_maps(scenes, factor, cfg.object_loss_weight)
    rng = np.random.default_rng(cfg.seed + 3)
    g = torch.Generator().manual_seed(cfg.seed + 3)
    # token ids of the empty caption, used for dropout
    t0 = time.time()
    history = []
    avg = None
    for step in range(cfg.unet_steps):
        unet.train()
        text_encoder.train(not frozen)
        idx = rng.integers(len(latents), size=cfg.unet_batch)
        caps = ["" if rng.random() < cfg.caption_dropout else caption(scenes[i], rng, world=world) for i in idx]
        ids = tok(caps, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (cfg.unet_batch,), generator=g)
        xt = noise_sched.add_noise(x0, noise, t)
        with torch.set_grad_enabled(not frozen):
            enc = text_encoder(ids)[0]
        pred = unet(xt, t, enc).sample
        target = noise_sched.get_velocity(x0, noise, t)
        sq = (pred - target).pow(2)
        loss_each = sq.mean(dim=(1, 2, 3))  # plain MSE, for the log
        weighted = loss_each if pixel_weights is None else (sq * pixel_weights[idx]).mean(dim=(1, 2, 3))
        loss = (weighted * weights[t]).mean()
        _clipped_step(opt, sched, loss, params)
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        _ema_update(ema_unet, unet, decay)
        if not frozen:
            _ema_update(ema_te, text_encoder, decay)
        avg = loss_each.mean().item() if avg is None else 0.98 * avg + 0.02 * loss_each.mean().item()
        if step % 100 == 0 or step == cfg.unet_steps - 1:
            el = time.time() - t0
            eta = el / (step + 1) * (cfg.unet_steps - step - 1)
            _log(f"unet step {step}/{cfg.unet_steps} mse {avg:.4f} lr {sched.get_last_lr()[0]:.2e} ({el:.0f}s, eta {eta / 60:.1f} min)", log)
        if (step + 1) % cfg.probe_every == 0 or step == cfg.unet_steps - 1:
            pipe = build_pipeline(vae, ema_te, tok, ema_unet)
            history.append(_probe_and_checkpoint(pipe, oracle, cfg, step + 1, work, log))
    return ema_te, ema_unet, history


# -------------------------------------------------------------------- main


def calibrate_oracle_reject(oracle: Oracle, vae, cfg: TrainConfig, test_scenes: list[Scene], test_images: np.ndarray) -> dict:
    """Give the oracle its reject option and measure it.

    The threshold comes from ``reject_calibration_images`` held-out
    object-less renders and their VAE reconstructions (generated images are
    decoded ones), at ``reject_false_accept_rate``. Then, on images it was not
    calibrated on: the share of the fresh test renders that show a known kind
    but are answered "none" (the price of the option), and the share of
    renders of kinds no world names (:data:`UNKNOWN_KINDS`) answered "none"
    (what it buys)."""
    world = get_world(cfg.world)
    n = cfg.reject_calibration_images
    _, empty = make_data(n, cfg.seed + 20_000, world, object=None)
    empty_recons = decode(vae, encode_means(vae, empty))
    record = dict(oracle.calibrate_reject(torch.cat([_to_tensor(empty), _to_tensor(empty_recons)]), cfg.reject_false_accept_rate))
    known = [k for k, s in enumerate(test_scenes) if s.object is not None]
    verdicts = oracle.labels(oracle.predict(_to_tensor(test_images[known])))["object"]
    record["known_kinds_answered_none"] = sum(v == "none" for v in verdicts) / max(1, len(verdicts))
    rng = np.random.default_rng(cfg.seed + 21_000)
    unknown = [sample_scene(rng, object=UNKNOWN_KINDS[k % len(UNKNOWN_KINDS)], world=world) for k in range(n)]
    verdicts = oracle.labels(oracle.predict(_to_tensor(np.stack([render(s) for s in unknown]))))["object"]
    record["unknown_kinds_answered_none"] = sum(v == "none" for v in verdicts) / len(verdicts)
    return record


def _strip_local_paths(folder: Path) -> None:
    """Drop ``_name_or_path`` (the training machine's folder) from the saved configs."""
    for cfg_file in folder.rglob("config.json"):
        data = json.loads(cfg_file.read_text())
        if data.pop("_name_or_path", None) is not None:
            cfg_file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def write_second_judge_recipe(folder: Path, cfg: TrainConfig, seconds: dict) -> dict:
    """``recipe.json`` beside the second judge: its settings and stage seconds."""
    recipe = {
        "config": {k: v for k, v in asdict(cfg).items() if k.startswith("judge2_") or k in ("seed", "n_images", "threads")},
        "seed": cfg.seed,
        "steps": cfg.judge2_steps,
        "torch": torch.__version__,
        "seconds": {k: None if v is None else round(v, 1) for k, v in seconds.items()},
    }
    (Path(folder) / "recipe.json").write_text(json.dumps(recipe, indent=2))
    return recipe


def train_second_judge_alone(out: str | Path, cfg: TrainConfig, log: Callable[[str], None] | None = None) -> SecondJudge:
    """Rebuild only the second judge into ``out``, with its recipe: the
    recipe's data and judge2 stages (the renders and seeds of
    :func:`train_all`, which takes 47 minutes for all its stages). Its
    quality report needs a pipeline
    (``benchmarks/shapeworld_quality.py --judge judge2 --write``)."""
    torch.set_num_threads(cfg.threads)
    out = Path(out)
    t = time.time()
    _log(f"data: rendering {cfg.n_images} scenes", log)
    scenes, images = make_data(cfg.n_images, cfg.seed)
    lab = labels(scenes)
    seconds = {"data": time.time() - t}
    t = time.time()
    judge2 = train_second_judge(cfg, images, lab, log)
    seconds["judge2"] = time.time() - t
    judge2.save(out)
    write_second_judge_recipe(out, cfg, seconds)
    _log(f"judge2: {seconds['judge2']:.0f}s on {cfg.threads} thread(s); saved in {out}", log)
    return judge2


class _StageCache:
    """Stages trained by an earlier run of the recipe, kept in ``out/.work`` and reused.

    A stage whose artifact is there is loaded instead of trained; its seconds
    then are the earlier run's (``stage_seconds.json``), recorded in the
    recipe as reused, so an interrupted 47-minute run resumes where it stopped.
    """

    def __init__(self, work: Path, log: Callable[[str], None] | None):
        self.work, self.log = work, log
        self.file = work / "stage_seconds.json"
        self.earlier: dict[str, float] = json.loads(self.file.read_text()) if self.file.exists() else {}
        self.reused: dict[str, float | None] = {}

    def get(self, name: str, artifact: Path, load: Callable[[], Any], train_and_save: Callable[[], Any]) -> Any:
        """The stage ``name``: loaded if ``artifact`` exists, else trained (and saved) by ``train_and_save``."""
        if artifact.exists():
            _log(f"{name}: reusing .work/{name}", self.log)
            self.reused[name] = self.earlier.get(name)
            return load()
        t = time.time()
        result = train_and_save()
        self.earlier[name] = round(time.time() - t, 1)
        self.file.write_text(json.dumps(self.earlier))
        return result


@dataclass
class _Data:
    """The training renders and the fresh test renders every stage is checked on."""

    scenes: list
    images: np.ndarray
    labels: dict
    test_scenes: list
    test_images: np.ndarray
    test_labels: dict


def _render_data(cfg: TrainConfig, world, heads, log) -> _Data:
    _log(f"data: rendering {cfg.n_images} scenes of {world.name}", log)
    scenes, images = make_data(cfg.n_images, cfg.seed, world)
    test_scenes, test_images = make_data(1000 if cfg.n_images > 1000 else 100, cfg.seed + 10_000, world)
    return _Data(scenes, images, labels(scenes, heads), test_scenes, test_images, labels(test_scenes, heads))


def _clip_stage(cfg: TrainConfig, data: _Data, tok, stages: _StageCache, log) -> ShapeWorldCLIP | None:
    from .evaluate import clip_render_quality

    if cfg.clip_steps <= 0:
        return None
    folder = stages.work / "clip"

    def train_and_save() -> ShapeWorldCLIP:
        clip = train_clip(cfg, data.scenes, data.images, tok, log)
        clip.save(folder)
        return clip

    clip = stages.get("clip", folder / "clip.safetensors", lambda: ShapeWorldCLIP.load(folder), train_and_save)
    clip.tokenizer = tok
    _log(f"clip on fresh renders: {json.dumps(clip_render_quality(clip, data.test_scenes, data.test_images))}", log)
    return clip


def _vae_stage(cfg: TrainConfig, data: _Data, stages: _StageCache, log):
    from diffusers import AutoencoderKL

    folder = stages.work / "vae"

    def train_and_save():
        vae = train_vae(cfg, data.images, log)
        vae.save_pretrained(str(folder), safe_serialization=True)
        return vae

    return stages.get("vae", folder / "config.json", lambda: AutoencoderKL.from_pretrained(str(folder)).eval(), train_and_save)


def _latent_scale(vae, data: _Data, log) -> tuple[Tensor, float, np.ndarray, float]:
    """The training latents, the VAE's scaling factor (unit latent std), test reconstructions and their MSE."""
    means = encode_means(vae, data.images)
    scale = float(1.0 / means.std())
    vae.register_to_config(scaling_factor=scale)
    test_recons = decode(vae, encode_means(vae, data.test_images))
    mse = float(np.mean((test_recons.astype(np.float32) - data.test_images.astype(np.float32)) ** 2) / 255**2)
    _log(f"latents: {tuple(means.shape)}, std {means.std():.3f} -> scaling_factor {scale:.4f}; test recon mse {mse:.5f}", log)
    return means, scale, test_recons, mse


def _oracle_stage(cfg: TrainConfig, data: _Data, vae, means, test_recons, stages: _StageCache, log):
    """The oracle (loaded or trained), its accuracy on renders and reconstructions, and its reject option."""

    def train_and_save() -> Oracle:
        oracle = train_oracle(cfg, *oracle_training_data(cfg, vae, data.images, means, data.labels), log)
        oracle.save(stages.work)
        return oracle

    oracle = stages.get("oracle", stages.work / "oracle.safetensors", lambda: Oracle.load(stages.work), train_and_save)
    acc_clean = render_accuracy(oracle, data.test_images, data.test_labels)
    acc_rec = render_accuracy(oracle, test_recons, data.test_labels)
    _log(f"oracle accuracy on fresh renders: {json.dumps({k: round(v, 4) for k, v in acc_clean.items()})}", log)
    _log(f"oracle accuracy on their VAE reconstructions: {json.dumps({k: round(v, 4) for k, v in acc_rec.items()})}", log)
    reject = None
    if cfg.reject_false_accept_rate is not None:
        reject = calibrate_oracle_reject(oracle, vae, cfg, data.test_scenes, data.test_images)
        _log(f"oracle reject option: {json.dumps(reject)}", log)
    return oracle, acc_clean, acc_rec, reject


def _judge2_stage(cfg: TrainConfig, data: _Data, stages: _StageCache, log) -> SecondJudge:
    folder = stages.work / "judge2"

    def train_and_save() -> SecondJudge:
        judge2 = train_second_judge(cfg, data.images, data.labels, log)
        judge2.save(folder)
        return judge2

    judge2 = stages.get("judge2", folder / f"{SecondJudge.name}.safetensors", lambda: SecondJudge.load(folder), train_and_save)
    acc2 = render_accuracy(judge2, data.test_images, data.test_labels)
    _log(f"judge2 accuracy on fresh renders: {json.dumps({k: round(v, 4) for k, v in acc2.items()})}", log)
    return judge2


def _ship(out: Path, work: Path, pipe, oracle, judge2, clip) -> None:
    """Save the pipeline (no local paths), the judges and CLIP into ``out``."""
    pipe.save_pretrained(str(out / "pipeline"), safe_serialization=True)
    _strip_local_paths(out / "pipeline")
    # keep the plain vocabulary and merges files beside the tokenizer's JSON
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(work / "tokenizer" / name, out / "pipeline" / "tokenizer" / name)
    oracle.save(out)
    judge2.save(out / "judge2")
    if clip is not None:
        clip.save(out / "clip")


def _quality_gate(cfg: TrainConfig, world, pipe, oracle, judge2, clip, data: _Data, test_recons, log) -> tuple:
    """The gate on held-out prompts: the oracle's agreement, CLIP's (if trained) and the second judge's quality."""
    from .evaluate import agreement, clip_quality, gate_images, renders_of_prompts, second_judge_quality

    _log("quality gate on held-out prompts ...", log)
    gate_set = gate_images(pipe, limit=cfg.gate_limit or None, world=world)
    gate = agreement(oracle, *gate_set)
    clip_gate = None
    if clip is not None:
        clip_gate = clip_quality(clip, *gate_set, renders_of_prompts(gate_set[1], cfg.seed + 30_000, world))
    judge2_quality = second_judge_quality(judge2, oracle, data.test_images, data.test_labels, test_recons, gate_set)
    judge2_quality["render_seed"] = cfg.seed + 10_000
    return gate, clip_gate, judge2_quality


@dataclass
class _Records:
    """What :func:`train_all` measured, for ``recipe.json`` and ``quality.json``."""

    cfg: TrainConfig
    world: World
    scale: float
    mse: float
    times: dict
    stages: _StageCache
    history: list
    acc_clean: dict
    acc_rec: dict
    reject: dict | None
    gate: dict
    clip_gate: dict | None
    judge2_quality: dict


def _write_records(out: Path, r: _Records, clip, data: _Data) -> tuple[dict, dict]:
    """Write the recipe, the quality report and the second judge's records; returns (recipe, quality)."""
    from .evaluate import clip_render_quality

    cfg = r.cfg
    recipe = {
        "config": asdict(cfg),
        "seed": cfg.seed,
        "world": r.world.name,
        "steps": {"vae": cfg.vae_steps, "oracle": cfg.oracle_steps, "judge2": cfg.judge2_steps, "unet": cfg.unet_steps}
        | ({"clip": cfg.clip_steps} if clip is not None else {}),
        "vae_scaling_factor": r.scale,
        "torch": torch.__version__,
        "seconds": {k: round(v, 1) for k, v in r.times.items()},
        # stages taken from .work/ (trained by an earlier run of this recipe) and their seconds then
        "reused_stages_seconds": r.stages.reused,
        "probe_history": r.history,
    }
    (out / "recipe.json").write_text(json.dumps(recipe, indent=2))
    quality = {
        "oracle_accuracy_renders": r.acc_clean,
        "oracle_accuracy_reconstructions": r.acc_rec,
        "vae_recon_mse": r.mse,
        "gate": r.gate,
    }
    if r.reject is not None:
        quality["oracle_reject"] = r.reject
    if clip is not None:
        quality["clip_renders"] = clip_render_quality(clip, data.test_scenes, data.test_images)
        quality["clip_gate"] = r.clip_gate
    (out / "quality.json").write_text(json.dumps(quality, indent=2))
    (out / "judge2" / "quality.json").write_text(json.dumps(r.judge2_quality, indent=2))
    # the judge2 stage's training seconds (an earlier run's when reused)
    write_second_judge_recipe(out / "judge2", cfg, {"data": r.times["data"], "judge2": r.stages.earlier.get("judge2")})
    _log(
        "judge2 on the gate: object {:.3f} (oracle {:.3f}); same object as the oracle on {:.3f} of the images".format(
            r.judge2_quality["gate"].get("object", 0.0), r.gate.get("object", 0.0), r.judge2_quality["inter_judge_agreement"]["object"]
        ),
        r.stages.log,
    )
    return recipe, quality


def train_all(out: str | Path, cfg: TrainConfig, log: Callable[[str], None] | None = None) -> dict:
    """Run every stage and write the shipped artifacts into ``out``.

    Stages: renders, CLIP (optional), VAE, latent scale, oracle, second
    judge, text encoder + UNet, then the shipped files and the quality gate.
    Finished stages are reused from ``out/.work`` (:class:`_StageCache`).
    """
    from .tokenizer import make_tokenizer

    torch.set_num_threads(cfg.threads)
    world = get_world(cfg.world)
    out = Path(out)
    work = out / ".work"
    work.mkdir(parents=True, exist_ok=True)
    stages = _StageCache(work, log)
    times: dict[str, float] = {}
    t_all = t = time.time()

    def lap(name: str) -> None:
        nonlocal t
        times[name] = time.time() - t
        t = time.time()

    data = _render_data(cfg, world, heads_for(world), log)
    lap("data")
    tok = make_tokenizer(work / "tokenizer", world=world)
    t = time.time()
    clip = _clip_stage(cfg, data, tok, stages, log)
    if clip is not None:
        lap("clip")
    t = time.time()
    vae = _vae_stage(cfg, data, stages, log)
    lap("vae")
    means, scale, test_recons, mse = _latent_scale(vae, data, log)
    lap("latents")
    oracle, acc_clean, acc_rec, reject = _oracle_stage(cfg, data, vae, means, test_recons, stages, log)
    lap("oracle")
    judge2 = _judge2_stage(cfg, data, stages, log)
    lap("judge2")
    frozen = None if clip is None else clip.text_model
    text_encoder, unet, history = train_unet(cfg, data.scenes, means * scale, vae, tok, oracle, work, log, frozen)
    lap("unet")
    pipe = build_pipeline(vae, text_encoder, tok, unet)
    _ship(out, work, pipe, oracle, judge2, clip)
    gate, clip_gate, judge2_quality = _quality_gate(cfg, world, pipe, oracle, judge2, clip, data, test_recons, log)
    lap("gate")
    times["total"] = time.time() - t_all
    records = _Records(cfg, world, scale, mse, times, stages, history, acc_clean, acc_rec, reject, gate, clip_gate, judge2_quality)
    recipe, quality = _write_records(out, records, clip, data)
    size = _dir_size(out) - _dir_size(work)
    _log(f"done in {times['total'] / 60:.1f} min; shipped artifacts {size / 1e6:.1f} MB", log)
    return {"quality": quality, "recipe": recipe, "size_bytes": size}
