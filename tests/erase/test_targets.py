import os

import pytest
import torch
from torch import nn

from fia.architectures import build_denoiser, unet_config
from fia.errors import FIAError
from fia.targets import TargetLinear, denoiser, find_targets


@pytest.fixture(scope="module")
def sd15():
    return build_denoiser("sd15")


@pytest.fixture(scope="module")
def sdxl():
    return build_denoiser("sdxl")


def _count(targets):
    return sum(t.shape[0] * t.shape[1] for t in targets)


def test_sd15_ffn2(sd15):
    t = find_targets(sd15)
    # down: 3 cross-attn blocks x 2 layers; mid: 1; up: 3 cross-attn blocks x 3 layers
    assert len(t) == 16
    shapes = [x.shape for x in t]
    assert shapes.count((320, 1280)) == 5
    assert shapes.count((640, 2560)) == 5
    assert shapes.count((1280, 5120)) == 6
    assert _count(t) == 5 * 320 * 1280 + 5 * 640 * 2560 + 6 * 1280 * 5120 == 49_561_600
    assert all(isinstance(x, TargetLinear) and isinstance(x.module, nn.Linear) for x in t)
    assert all(x.name.endswith("ff.net.2") for x in t)
    assert t[0].name == "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2"
    assert dict(sd15.named_modules())[t[5].name] is t[5].module


def test_sd21_ffn2():
    t = find_targets(build_denoiser("sd21"))
    assert len(t) == 16 and _count(t) == 49_561_600


def test_sdxl_ffn2(sdxl):
    t = find_targets(sdxl)
    # transformer_layers_per_block [1, 2, 10], layers_per_block 2:
    # down: block 1 (640) 2 layers x 2 blocks = 4, block 2 (1280) 2 x 10 = 20
    # mid: 10 (1280); up (reversed depths): block 0 (1280) 3 x 10 = 30, block 1 (640) 3 x 2 = 6
    assert len(t) == 4 + 20 + 10 + 30 + 6 == 70
    shapes = [x.shape for x in t]
    assert shapes.count((640, 2560)) == 10 and shapes.count((1280, 5120)) == 60
    assert _count(t) == 409_600_000


def test_ffn1_and_attn_kv(sd15):
    f1 = find_targets(sd15, "ffn1")
    assert len(f1) == 16
    assert all(x.name.endswith("ff.net.0.proj") for x in f1)
    # GEGLU projects to 2 x inner
    assert f1[0].shape == (2 * 1280, 320)
    kv = find_targets(sd15, "attn_kv")
    assert len(kv) == 32
    assert kv[0].name.endswith("attn2.to_k") and kv[1].name.endswith("attn2.to_v")
    assert kv[0].shape == (320, 768)


def test_callable_filter(sd15):
    t = find_targets(sd15, lambda m, name: name.startswith("mid_block") and name.endswith("ff.net.2"))
    assert [x.name for x in t] == ["mid_block.attentions.0.transformer_blocks.0.ff.net.2"]
    with pytest.raises(FIAError, match="matched no"):
        find_targets(sd15, lambda m, name: False)


def test_order_deterministic():
    a = [x.name for x in find_targets(build_denoiser("sd15"))]
    b = [x.name for x in find_targets(build_denoiser("sd15"))]
    assert a == b and len(set(a)) == len(a)


def test_transformers_pixart_and_sd3():
    pix = build_denoiser("pixart-tiny")
    t = find_targets(pix)
    assert [x.name for x in t] == [f"transformer_blocks.{i}.ff.net.2" for i in range(2)]
    assert len(find_targets(pix, "attn_kv")) == 4
    sd3 = find_targets(build_denoiser("sd3-tiny"))
    # image-stream FF in every block, text-stream ff_context in all but the last
    assert [x.name for x in sd3] == [
        "transformer_blocks.0.ff.net.2",
        "transformer_blocks.0.ff_context.net.2",
        "transformer_blocks.1.ff.net.2",
    ]
    with pytest.raises(FIAError, match="attn2"):
        find_targets(build_denoiser("sd3-tiny"), "attn_kv")


def test_no_feed_forward_raises():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(FIAError, match="no FFN2 layer found in Sequential"):
        find_targets(model)
    with pytest.raises(FIAError, match="unknown targets"):
        find_targets(model, "ffn3")


def test_denoiser():
    class Pipe:
        unet = nn.Linear(1, 1)

    class TPipe:
        transformer = nn.Linear(1, 1)

    assert denoiser(Pipe()) is Pipe.unet
    assert denoiser(TPipe()) is TPipe.transformer
    with pytest.raises(FIAError, match="no `unet` or `transformer`"):
        denoiser(object())
    # a bare denoiser is its own denoiser, and the mask module uses this one lookup
    bare = nn.Linear(1, 1)
    assert denoiser(bare) is bare
    import fia.mask

    assert fia.mask.denoiser is denoiser


def test_configs():
    assert unet_config("sd1.5") == unet_config("sd15")
    assert unet_config("sdxl")["transformer_layers_per_block"] == [1, 2, 10]
    c = unet_config("sd15")
    c["sample_size"] = 1
    assert unet_config("sd15")["sample_size"] == 64
    with pytest.raises(FIAError):
        unet_config("sd99")
    m = build_denoiser("sd15")
    assert next(m.parameters()).device == torch.device("meta")


@pytest.mark.skipif(not os.environ.get("FIA_SLOW"), reason="builds the full SD 1.5 UNet (3.4 GB, ~10-40 s); set FIA_SLOW=1")
def test_random_sd15_pipeline_true_sizes():
    from fia.architectures import random_sd15_pipeline

    pipe = random_sd15_pipeline(latent_size=8)
    assert pipe.vae_scale_factor == 8
    t = find_targets(pipe.unet)
    assert len(t) == 16 and _count(t) == 49_561_600
    with torch.inference_mode():
        out = pipe(prompt=["a park"], num_inference_steps=1, output_type="latent",
                   generator=[torch.Generator().manual_seed(0)]).images
    assert out.shape == (1, 4, 8, 8)
