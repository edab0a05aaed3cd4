"""Tiny random diffusers pipelines for tests and examples.

They have the real classes and code paths of Stable Diffusion (1.x and XL)
at toy sizes, the way diffusers' own tests build them: a UNet with
cross-attention transformer blocks (so FFN2 layers exist), a CLIP text
encoder with a small random embedding, a VAE and a scheduler. Nothing is
downloaded; the tokenizer is the byte-level one of
:func:`fia.shapeworld.tokenizer.byte_level_tokenizer`. The parts
(:func:`tiny_text_encoder`, :func:`tiny_vae`, :func:`sd_pipeline`) also build
:func:`fia.architectures.random_sd15_pipeline`.
"""

from __future__ import annotations

from typing import Any

import torch

from fia.shapeworld.tokenizer import byte_level_tokenizer

# Stable Diffusion's training noise schedule, shared by the schedulers built here
SD_NOISE_SCHEDULE: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
}


def tiny_text_encoder(tokenizer, hidden_size: int, *, with_projection: bool = False, **config: Any):
    """A random CLIP text encoder sized for ``tokenizer``'s vocabulary.

    Defaults: 2 layers of 4 heads, feed-forward width 37; ``config`` overrides
    or adds ``CLIPTextConfig`` entries. ``with_projection`` builds the
    ``CLIPTextModelWithProjection`` of SD XL's second encoder.
    """
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    settings = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "hidden_size": hidden_size,
        "intermediate_size": 37,
        "layer_norm_eps": 1e-05,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "vocab_size": len(tokenizer),
    }
    settings.update(config)
    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return model_class(CLIPTextConfig(**settings))


def tiny_unet(**layout: Any):
    """A random two-level ``UNet2DConditionModel`` on 8x8x4 latents, one layer per block.

    ``layout`` gives the block types, attention and conditioning settings
    (and may override the defaults).
    """
    from diffusers import UNet2DConditionModel

    settings = {
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "norm_num_groups": 32,
    }
    settings.update(layout)
    return UNet2DConditionModel(**settings)


def tiny_sd_pipeline(seed: int = 0, cross_attention_dim: int = 32):
    """A random ``StableDiffusionPipeline`` making 16x16 images (8x8 latents).

    Its UNet has 4 transformer blocks, hence 4 FFN2 layers: one in the
    cross-attention down block, one in the mid block, two in the up block.
    """
    torch.manual_seed(seed)
    unet = tiny_unet(
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
    )
    vae = tiny_vae()
    tokenizer = byte_level_tokenizer()
    text_encoder = tiny_text_encoder(tokenizer, cross_attention_dim)
    return sd_pipeline(unet, vae, text_encoder, tokenizer)


def tiny_vae(block_out_channels: tuple[int, ...] = (32, 64), sample_size: int = 32):
    """A random ``AutoencoderKL`` with one level per entry of ``block_out_channels``.

    The default two levels map 32x32 RGB <-> 16x16x4 latents; each level
    halves the resolution after the first.
    """
    from diffusers import AutoencoderKL

    levels = len(block_out_channels)
    return AutoencoderKL(
        block_out_channels=tuple(block_out_channels),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        latent_channels=4,
        layers_per_block=1,
        sample_size=sample_size,
        norm_num_groups=32,
    )


def sd_pipeline(unet, vae, text_encoder, tokenizer, scheduler=None):
    """A ``StableDiffusionPipeline`` from its parts; no safety checker, no progress bar.

    Without ``scheduler``: DDIM on Stable Diffusion's betas (scaled linear
    0.00085-0.012) with ``clip_sample=False``, as SD's own configs set it.
    """
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    if scheduler is None:
        scheduler = DDIMScheduler(**SD_NOISE_SCHEDULE, clip_sample=False, set_alpha_to_one=False)
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_pipeline(seed: int = 0):
    """A random ``StableDiffusionXLPipeline`` (two text encoders, added conditions)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    torch.manual_seed(seed)
    unet = tiny_unet(
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 5 * 8 + 40
        cross_attention_dim=64,
    )
    vae = tiny_vae()
    tokenizer = byte_level_tokenizer()
    text_encoder = tiny_text_encoder(tokenizer, 32, hidden_act="gelu", projection_dim=32)
    text_encoder_2 = tiny_text_encoder(tokenizer, 32, hidden_act="gelu", projection_dim=32, with_projection=True)
    scheduler = EulerDiscreteScheduler(**SD_NOISE_SCHEDULE, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        scheduler=scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
