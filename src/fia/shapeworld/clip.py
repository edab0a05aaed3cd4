"""ShapeWorld's CLIP: an image encoder and a text encoder trained contrastively.

The text encoder is a ``transformers.CLIPTextModel`` reading the diffusion
model's tokenizer; its pooled output (the hidden state at the end-of-text
token) goes through a linear projection, the image encoder is a small conv
net with its own projection, and both embeddings are L2-normalised. Trained
on rendered scenes and their captions with the symmetric InfoNCE loss
(:func:`infonce_loss`) at a learned temperature, as CLIP was. The second
world's recipe then freezes the text encoder and conditions its UNet on it,
as Stable Diffusion was conditioned on CLIP's.

The pair also measures:

* the CLIP score (:func:`clip_score`): ``100 * max(cos(image, caption), 0)``,
  the scale of the paper's CLIP score;
* styles, zero-shot (:func:`clip_styles`): the style whose caption scores
  highest.

Saved as ``clip.safetensors``, ``clip_config.json`` and the tokenizer in
``tokenizer/``, in one folder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fia.errors import FIAError

from .oracle import _block
from .render import parse_prompt, prompt_for
from .vocab import SHAPEWORLD, STYLE_NAMES, get_world

# CLIP's initial temperature (0.07) and its cap on the logit scale (100)
INITIAL_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = math.log(100.0)


def text_encoder_config(tok, hidden: int, layers: int, heads: int) -> dict:
    """The ``CLIPTextConfig`` keyword arguments of a text encoder reading ``tok``."""
    return {
        "vocab_size": len(tok),
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": tok.model_max_length,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "projection_dim": hidden,
    }


def infonce_loss(logits: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE over a (B, B) image-by-caption logit matrix.

    With ``logits[i, j] = s * cos(image_i, caption_j)`` and target
    distributions ``T`` (default: the identity, image ``i`` belongs to
    caption ``i``)::

        L = ( CE_rows(logits, T) + CE_rows(logits^T, T^T) ) / 2
        CE_rows(Z, T) = -1/B * sum_i sum_j T[i, j] * log softmax(Z[i])_j

    i.e. the mean of the image-to-caption and caption-to-image cross
    entropies.
    """
    if targets is None:
        targets = torch.eye(len(logits), dtype=logits.dtype, device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets.T))


def caption_targets(captions: Sequence[str]) -> torch.Tensor:
    """InfoNCE targets that do not punish a batch for repeating a caption:
    row ``i`` spreads its mass evenly over every ``j`` whose caption equals
    caption ``i`` (the identity when all captions differ)."""
    same = torch.tensor([[a == b for b in captions] for a in captions], dtype=torch.float32)
    return same / same.sum(dim=1, keepdim=True)


class ImageEncoder(nn.Module):
    """Conv stack (32 -> 16 -> 8 -> 4 px), mean and max pooled, projected to
    ``embed_dim``."""

    def __init__(self, width: int, embed_dim: int):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            _block(3, w, 1), _block(w, 2 * w, 2), _block(2 * w, 2 * w, 1), _block(2 * w, 4 * w, 2), _block(4 * w, 4 * w, 2)
        )
        self.projection = nn.Linear(8 * w, embed_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if x.shape[-2:] != (32, 32):
            x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        h = self.body(x * 2 - 1)
        return self.projection(torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1))


class ShapeWorldCLIP(nn.Module):
    """The image and text encoders, their projections and the learned
    logit scale ``s = exp(logit_scale)`` (at most 100)."""

    name = "clip"

    def __init__(self, text: dict, embed_dim: int = 64, image_width: int = 32, world: str = SHAPEWORLD.name):
        super().__init__()
        from transformers import CLIPTextConfig, CLIPTextModel

        self.world = get_world(world)
        self.config = {"text": dict(text), "embed_dim": embed_dim, "image_width": image_width, "world": self.world.name}
        self.text_model = CLIPTextModel(CLIPTextConfig(**text))
        self.text_projection = nn.Linear(text["hidden_size"], embed_dim, bias=False)
        self.image_encoder = ImageEncoder(image_width, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(INITIAL_LOGIT_SCALE))
        self.tokenizer = None  # set by the recipe or by load

    def token_ids(self, captions: Sequence[str]) -> torch.Tensor:
        tok = self.tokenizer
        return tok(list(captions), padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Unit caption embeddings (B, D) from token ids."""
        pooled = self.text_model(ids.to(self.logit_scale.device)).pooler_output
        return F.normalize(self.text_projection(pooled), dim=-1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Unit image embeddings (B, D) from images (B, 3, H, W) in [0, 1]."""
        return F.normalize(self.image_encoder(images.to(self.logit_scale.device)), dim=-1)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, B): ``s * cos(image_i, caption_j)``."""
        return self.scale() * self.encode_image(images) @ self.encode_text(ids).T

    # ------------------------------------------------------------ storage

    def save(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / "clip.safetensors"))
        (folder / "clip_config.json").write_text(json.dumps(self.config, indent=2) + "\n")
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(folder / "tokenizer"))

    @classmethod
    def load(cls, folder: str | Path, device="cpu") -> ShapeWorldCLIP:
        from safetensors.torch import load_file

        from .tokenizer import load_tokenizer

        folder = Path(folder)
        if not (folder / "clip_config.json").is_file() or not (folder / "clip.safetensors").is_file():
            raise FIAError(
                f"{folder} holds no ShapeWorld CLIP (clip.safetensors and clip_config.json): "
                "pass the clip/ folder that `fia shapeworld train --world shapeworld2` writes"
            )
        model = cls(**json.loads((folder / "clip_config.json").read_text()))
        model.load_state_dict(load_file(str(folder / "clip.safetensors")))
        if (folder / "tokenizer").is_dir():
            model.tokenizer = load_tokenizer(folder / "tokenizer")
        return model.to(device).eval()


def load_clip(path: str | Path, device="cpu") -> ShapeWorldCLIP:
    """A saved ShapeWorld CLIP (eval mode), with its tokenizer."""
    return ShapeWorldCLIP.load(path, device=device)


@torch.no_grad()
def clip_score(clip: ShapeWorldCLIP, images: torch.Tensor, captions: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """Per-image CLIP score (N,): ``100 * max(cos(image, caption), 0)``."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    out = []
    for i in range(0, len(images), batch_size):
        img = clip.encode_image(images[i : i + batch_size])
        txt = clip.encode_text(clip.token_ids(captions[i : i + batch_size]))
        out.append(100.0 * (img * txt).sum(-1).clamp_min(0).cpu())
    return torch.cat(out) if out else torch.zeros(0)


STYLE_LABELS: tuple[str, ...] = STYLE_NAMES + ("none",)


@torch.no_grad()
def clip_style_probs(clip: ShapeWorldCLIP, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    """The zero-shot CLIP style judge's probabilities (N, S + 1), labels in
    :data:`STYLE_LABELS` order: a softmax at the CLIP's learned scale over the
    cosines with candidate captions that name what the image's prompt names
    (object, colour, place, attribute) with each style in turn, and without
    one ("none")."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    candidates: dict[str, torch.Tensor] = {}  # prompt -> its candidates' embeddings (S + 1, D)
    for prompt in dict.fromkeys(prompts):
        f = parse_prompt(prompt, clip.world)
        named = (f.get("object"), f.get("color"), f.get("place"))
        captions = [prompt_for(*named, style=style, attribute=f.get("attribute")) for style in STYLE_LABELS[:-1]]
        captions.append(prompt_for(*named, attribute=f.get("attribute")))
        candidates[prompt] = clip.encode_text(clip.token_ids(captions))
    if not len(images):
        return torch.zeros(0, len(STYLE_LABELS))
    img = torch.cat([clip.encode_image(images[i : i + 256]) for i in range(0, len(images), 256)])
    cos = torch.stack([candidates[p] @ img[k] for k, p in enumerate(prompts)])
    return (clip.scale() * cos).softmax(-1).cpu()


def clip_styles(clip: ShapeWorldCLIP, images: torch.Tensor, prompts: Sequence[str]) -> list[str]:
    """The zero-shot CLIP style judge's verdicts: for each image, the label in
    :data:`STYLE_LABELS` whose caption scores highest (see :func:`clip_style_probs`)."""
    probs = clip_style_probs(clip, images, prompts)
    return [STYLE_LABELS[int(k)] for k in probs.argmax(-1).tolist()]
