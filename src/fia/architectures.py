"""Published denoiser configurations, buildable without weights.

The dicts below restate the ``unet/config.json`` of Stable Diffusion 1.5,
Stable Diffusion 2.1 and SDXL base 1.0, so tests and benchmarks can build the
true layer layout on the ``meta`` device (no memory, no download) or with
random weights on CPU (true FFN2 sizes for speed measurements). Two small
diffusion transformers (a PixArt-alpha-like ``PixArtTransformer2DModel`` and
an ``SD3Transformer2DModel``, reduced depth and width) cover target discovery
in transformer denoisers.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from fia.errors import FIAError

_SD15_UNET: dict[str, Any] = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

_SD21_UNET: dict[str, Any] = {
    **_SD15_UNET,
    "attention_head_dim": [5, 10, 20, 20],
    "cross_attention_dim": 1024,
    "dual_cross_attention": False,
    "sample_size": 96,
    "upcast_attention": True,
    "use_linear_projection": True,
}

_SDXL_UNET: dict[str, Any] = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}

_PIXART_TINY: dict[str, Any] = {
    "_class_name": "PixArtTransformer2DModel",
    "num_attention_heads": 2,
    "attention_head_dim": 8,
    "in_channels": 4,
    "out_channels": 8,
    "num_layers": 2,
    "cross_attention_dim": 16,
    "sample_size": 8,
    "patch_size": 2,
    "caption_channels": 16,
}

_SD3_TINY: dict[str, Any] = {
    "_class_name": "SD3Transformer2DModel",
    "sample_size": 8,
    "patch_size": 2,
    "in_channels": 4,
    "num_layers": 2,
    "attention_head_dim": 8,
    "num_attention_heads": 2,
    "joint_attention_dim": 16,
    "caption_projection_dim": 16,
    "pooled_projection_dim": 16,
    "out_channels": 4,
}

CONFIGS: dict[str, dict[str, Any]] = {
    "sd15": _SD15_UNET,
    "sd21": _SD21_UNET,
    "sdxl": _SDXL_UNET,
    "pixart-tiny": _PIXART_TINY,
    "sd3-tiny": _SD3_TINY,
}

_ALIASES = {
    "sd1.5": "sd15",
    "sd-1.5": "sd15",
    "sd14": "sd15",  # SD 1.4 and 1.5 share the UNet layout
    "sd1.4": "sd15",
    "sd2.1": "sd21",
    "sd-2.1": "sd21",
    "sd-xl": "sdxl",
}


def _canonical(name: str) -> str:
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in CONFIGS:
        raise FIAError(f"unknown architecture {name!r}; use one of: {', '.join(CONFIGS)}")
    return key


def unet_config(name: str) -> dict[str, Any]:
    """A copy of the published config of ``name`` (``sd15``, ``sd21``, ``sdxl``, ``pixart-tiny``, ``sd3-tiny``).

    The ``_class_name`` entry names the diffusers class; the others are its
    constructor arguments.
    """
    return copy.deepcopy(CONFIGS[_canonical(name)])


def _model_class(class_name: str):
    import diffusers

    return getattr(diffusers, class_name)


def build_denoiser(name: str, device: str | torch.device = "meta", **overrides: Any) -> nn.Module:
    """Build the denoiser ``name`` with random (or, on ``meta``, no) weights.

    On the default ``meta`` device no memory is allocated, so even SDXL's
    UNet builds in about a second; use it for counting layers and shapes.
    ``overrides`` replace config entries (e.g. ``sample_size``).
    """
    cfg = unet_config(name)
    cls = _model_class(cfg.pop("_class_name"))
    cfg.update(overrides)
    with torch.device(device):
        model = cls(**cfg)
    return model.eval()


def random_sd15_pipeline(latent_size: int = 8, dtype: torch.dtype = torch.float32, seed: int = 0):
    """A ``StableDiffusionPipeline`` with the true SD 1.5 UNet, random weights, on CPU.

    The UNet has SD 1.5's exact layout (16 FFN2 layers, 49.6 M FFN2 weights);
    ``latent_size`` sets the latent resolution (images are 8x larger). The
    rest is made cheap: a VAE with 4 blocks of 32 channels (scale factor 8),
    the byte-level test tokenizer, and a 1-layer CLIP text encoder of width
    768 (the UNet's cross-attention width). A DDIM scheduler with SD's beta
    schedule drives it. Meant for speed and memory measurements at true layer
    sizes; building it allocates about 3.4 GB (float32) and takes seconds.
    """
    from diffusers import UNet2DConditionModel

    from fia.shapeworld.tokenizer import byte_level_tokenizer
    from fia.testing import sd_pipeline, tiny_text_encoder, tiny_vae

    torch.manual_seed(seed)
    cfg = unet_config("sd15")
    cfg.pop("_class_name")
    cfg["sample_size"] = latent_size
    unet = UNet2DConditionModel(**cfg)
    vae = tiny_vae(block_out_channels=(32, 32, 32, 32), sample_size=latent_size * 8)
    tokenizer = byte_level_tokenizer()
    text_encoder = tiny_text_encoder(
        tokenizer,
        768,
        intermediate_size=1024,
        num_attention_heads=12,
        num_hidden_layers=1,
        max_position_embeddings=77,
    )
    pipe = sd_pipeline(unet, vae, text_encoder, tokenizer)
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    return pipe
