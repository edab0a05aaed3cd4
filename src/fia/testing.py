"""Tiny random diffusers pipelines for tests and examples.

They have the real classes and code paths of Stable Diffusion (1.x and XL)
at toy sizes, the way diffusers' own tests build them: a UNet with
cross-attention transformer blocks (so FFN2 layers exist), a CLIP text
encoder with a small random vocabulary-sized embedding, a VAE and a scheduler.
Nothing is downloaded; the tokenizer is the ShapeWorld tokenizer shipped
with the package once it exists, else a word-level CLIP tokenizer built here.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch


def _tiny_tokenizer():
    from transformers import CLIPTokenizer

    # A minimal byte-level CLIP BPE vocabulary: every byte symbol (alone and
    # as end of word) plus the special tokens. Any text tokenizes; no merges.
    symbols = list(byte_symbols().values())
    vocab: dict[str, int] = {}
    for s in symbols:
        vocab[s] = len(vocab)
    for s in symbols:
        vocab[s + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    # the files are read while loading, so the folder can go right after
    with tempfile.TemporaryDirectory(prefix="fia-tok-") as tmp:
        folder = Path(tmp)
        (folder / "vocab.json").write_text(json.dumps(vocab))
        (folder / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)


def byte_symbols() -> dict[int, str]:
    """The byte -> printable-character table of byte-level BPE (GPT-2, CLIP).

    Printable Latin-1 bytes map to themselves; the others are shifted to
    code points from 256 on, so every byte has a visible, distinct symbol.
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
    keep += list(range(ord("\xae"), ord("\xff") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def tiny_sd_pipeline(seed: int = 0, cross_attention_dim: int = 32):
    """A random ``StableDiffusionPipeline`` making 16x16 images (8x8 latents).

    Its UNet has 4 transformer blocks, hence 4 FFN2 layers: one in the
    cross-attention down block, one in the mid block, two in the up block.
    """
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = tiny_vae()
    tokenizer = _tiny_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            hidden_size=cross_attention_dim,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
        )
    )
    return sd_pipeline(unet, vae, text_encoder, tokenizer)


def tiny_vae():
    """A random two-level ``AutoencoderKL``: 32x32 RGB <-> 16x16x4 latents."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        sample_size=32,
        norm_num_groups=32,
    )


def sd_pipeline(unet, vae, text_encoder, tokenizer, scheduler=None):
    """A ``StableDiffusionPipeline`` from its parts; no safety checker, no progress bar.

    Without ``scheduler``: DDIM on Stable Diffusion's betas (scaled linear
    0.00085-0.012) with ``clip_sample=False``, as SD's own configs set it.
    """
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    if scheduler is None:
        scheduler = DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
        )
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
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 5 * 8 + 40
        cross_attention_dim=64,
        norm_num_groups=32,
    )
    vae = tiny_vae()
    tokenizer = _tiny_tokenizer()
    cfg = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(tokenizer),
        hidden_act="gelu",
        projection_dim=32,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(**cfg))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**cfg))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
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
