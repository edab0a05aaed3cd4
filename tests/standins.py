"""Stand-ins for evaluation tests: a random oracle, random judges, tiny pipelines.

Nothing here downloads weights; the judges have the real architectures at
reduced sizes (a bottleneck ResNet with ImageNet's 1000 labels, a small CLIP).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

class StandInOracle(nn.Module):
    """Same interface as the ShapeWorld oracle, random weights, any image size."""

    def __init__(self, seed: int = 0, world: str = "shapeworld"):
        super().__init__()
        from fia.shapeworld.vocab import COLORS, PLACE_NAMES, STYLE_NAMES, get_world

        self.world = get_world(world)
        self.HEADS = {
            "object": self.world.object_names + ("none",),
            "color": COLORS,
            "place": PLACE_NAMES,
            "style": STYLE_NAMES + ("none",),
            "attribute": ("absent", "burning"),
        }
        g = torch.Generator().manual_seed(seed)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.heads = nn.ModuleDict({h: nn.Linear(128, len(v)) for h, v in self.HEADS.items()})
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.eval()

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images.float())

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(images)
        return {h: lin(f).softmax(-1) for h, lin in self.heads.items()}


def random_mask(pipe, share: float = 0.5, seed: int = 0, concepts=("circle", "square")):
    """A real ConceptMask that zeroes a random ``share`` of every FFN2 weight."""
    from fia.mask import ConceptMask
    from fia.targets import denoiser, find_targets

    unet = denoiser(pipe)
    targets = find_targets(unet, "ffn2")
    g = torch.Generator().manual_seed(seed)
    weights = {t.name: t.module.weight for t in targets}
    prune = {n: torch.rand(w.shape, generator=g) < share for n, w in weights.items()}
    return ConceptMask.from_prune_masks(
        weights, prune, concepts=list(concepts), config={"r2": 0.1, "alpha": 0.6}, target_kind="ffn2",
        agnostic={n: 3 for n in weights}, tau_ca={n: 2 for n in weights},
    )  # fmt: skip


def write_concept_cache(cache: Path, pipe, mask) -> None:
    """Per-concept sensitivities A (one 2-D tensor per FFN2 layer) of ``mask``'s concepts.

    Written where erase would have cached them for the run that made ``mask``
    (the same key), with erase's cache writer.
    """
    from fia.cache import ConceptCache

    cache.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(1)
    shared = {lm.name: torch.rand(lm.shape, generator=g) for lm in mask.layers}
    store = ConceptCache(cache)
    for entry in store.entries(pipe, mask).values():
        a = {n: (v + 0.7 * torch.rand(v.shape, generator=g)).contiguous() for n, v in shared.items()}
        store.save_sensitivity(entry, a)


def resnet_folder(path: Path) -> Path:
    """A random bottleneck ResNet classifier with ImageNet's 1000 labels (reduced widths)."""
    from transformers import ResNetConfig, ResNetForImageClassification

    from fia.evaluate.judges import IMAGENETTE_IDS

    labels = {i: f"class {i}" for i in range(1000)}
    for name, i in IMAGENETTE_IDS.items():
        labels[i] = {"english springer": "English springer, English springer spaniel", "french horn": "French horn, horn"}.get(name, name)
    torch.manual_seed(0)
    cfg = ResNetConfig(
        embedding_size=8, hidden_sizes=[16, 32], depths=[1, 1], layer_type="bottleneck",
        num_labels=1000, id2label=labels, label2id={v: k for k, v in labels.items()},
    )  # fmt: skip
    ResNetForImageClassification(cfg).eval().save_pretrained(path)
    return path


def clip_folder(path: Path) -> Path:
    """A small random CLIPModel with the ShapeWorld-free test tokenizer and a preprocessor config."""
    from transformers import CLIPConfig, CLIPModel

    from fia.shapeworld.tokenizer import byte_level_tokenizer

    tok = byte_level_tokenizer()
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            max_position_embeddings=77,
        ),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=32, patch_size=8),
        projection_dim=16,
    )  # fmt: skip
    CLIPModel(cfg).eval().save_pretrained(path)
    tok.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(
        json.dumps({"crop_size": {"height": 32, "width": 32}, "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]})
    )
    return path


def feature_net(path: Path) -> Path:
    """A tiny Inception-like TorchScript feature extractor (random weights)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten()).eval()
    torch.jit.trace(net, torch.rand(1, 3, 299, 299)).save(str(path))
    return path
