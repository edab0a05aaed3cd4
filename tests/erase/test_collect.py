"""concept_sensitivity on the tiny random SD / SDXL pipelines."""

import pytest
import torch

from fia.architectures import build_denoiser
from fia.collect import concept_sensitivity
from fia.config import FIAConfig
from fia.errors import FIAError
from fia.targets import find_targets
from fia.testing import tiny_sd_pipeline, tiny_sdxl_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread

CONCEPT = ["a golf ball in a park", "a golf ball near the road", "a golf ball in a cafe"]
BASE = ["a park", "a road", "a cafe"]
SEEDS = [11, 12, 13]
CFG = FIAConfig(saliency_steps=3, num_inference_steps=8)


@pytest.fixture(scope="module")
def sd():
    return tiny_sd_pipeline()


@pytest.fixture(scope="module")
def sd_targets(sd):
    return find_targets(sd.unet)


def _run(pipe, targets, config=CFG, **kw):
    return concept_sensitivity(pipe, CONCEPT, BASE, SEEDS, SEEDS, config, targets, r1=0.05, **kw)


# ----------------------------------------------------------------- reference
def _per_prompt_rows(pipe, targets, prompt, seed, config):
    """Run one prompt alone; return {layer: [X_t, Y_t per step]} of its N rows (float64)."""
    got = {t.name: [] for t in targets}
    handles = []

    def make(name):
        def hook(mod, args, out):
            x = args[0].double()
            y = out.double() - mod.bias.double()
            if x.shape[0] == 2:  # [uncond; cond]
                x = x[1:] if config.cfg_rows == "cond" else x
                y = y[1:] if config.cfg_rows == "cond" else y
            got[name].append((x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])))

        return hook

    def stop(p, i, t, kw):
        if i + 1 >= config.saliency_steps:
            p._interrupt = True
        return {}

    for t in targets:
        handles.append(t.module.register_forward_hook(make(t.name)))
    try:
        with torch.inference_mode():
            pipe(prompt=[prompt], num_inference_steps=config.num_inference_steps,
                 guidance_scale=config.guidance_scale,
                 generator=[torch.Generator().manual_seed(seed)], output_type="latent",
                 callback_on_step_end=stop)
    finally:
        for h in handles:
            h.remove()
    return got


def _u_reference(w, x, y, eps):
    w = w.detach().double()
    xn = x.norm(dim=0)  # (C_in,)
    yn = y.norm(dim=0)  # (C_out,)
    g = y.T @ x  # (C_out, C_in)
    return w.abs() * xn[None, :] * g.abs() / (yn[:, None] * xn[None, :] + eps)


def _a_reference(s_steps, r1):
    n = s_steps[0].numel()
    k = max(1, int(r1 * n + 1e-9))
    strength = sum(s_steps) / len(s_steps)
    persist = torch.zeros_like(strength)
    for s in s_steps:
        vals = s.reshape(-1).sort(descending=True).values
        tau = 0.0 if int((vals > 0).sum()) < k else float(vals[k - 1])
        persist += (s > tau).double() / len(s_steps)
    top = float(strength.max())
    return 0.5 * (strength / top if top > 0 else strength * 0) + 0.5 * persist


def test_batched_equals_per_prompt_runs(sd, sd_targets):
    seen = {}
    a = _run(sd, sd_targets, on_saliency=lambda n, t, s: seen.__setitem__((n, t), s.clone()))
    rows_c = [_per_prompt_rows(sd, sd_targets, p, s, CFG) for p, s in zip(CONCEPT, SEEDS)]
    rows_b = [_per_prompt_rows(sd, sd_targets, p, s, CFG) for p, s in zip(BASE, SEEDS)]
    for t in sd_targets:
        w = t.module.weight
        s_ref = []
        for step in range(CFG.saliency_steps):
            uc = torch.stack([_u_reference(w, *r[t.name][step], CFG.eps) for r in rows_c])
            ub = torch.stack([_u_reference(w, *r[t.name][step], CFG.eps) for r in rows_b])
            s = (uc.mean(0) - ub.mean(0) - ub.std(0, correction=0)).clamp_min(0)
            s_ref.append(s)
            # float32 statistics vs float64 reference; S is a difference of
            # nearby means, so compare against the layer's scale
            scale = float(s.max())
            torch.testing.assert_close(seen[(t.name, step)].double(), s, rtol=0, atol=1e-4 * scale)
        a_ref = _a_reference(s_ref, 0.05)
        diff = (a[t.name].double() - a_ref).abs()
        # persistence is a step function of S: an entry within float noise of
        # tau_t may flip (a jump of 0.5 / steps); allow a handful at most
        assert float((diff > 1e-4).double().mean()) < 2e-3, t.name


@pytest.mark.parametrize("batch_size", [1, 4])
def test_chunked_equals_one_batch(sd, sd_targets, batch_size):
    a = _run(sd, sd_targets)
    b = _run(sd, sd_targets, CFG.replace(batch_size=batch_size))
    for name in a:
        # batched convolution kernels may differ from per-sample ones in the
        # last bits, so not bit-identical; strength terms agree to ~1e-6
        diff = (a[name] - b[name]).abs()
        assert float((diff > 1e-4).float().mean()) < 2e-3
        assert float(diff.median()) < 1e-5


def test_shapes_range_and_determinism(sd, sd_targets):
    a = _run(sd, sd_targets)
    b = _run(sd, sd_targets)
    assert list(a) == [t.name for t in sd_targets]
    for t in sd_targets:
        v = a[t.name]
        assert v.shape == t.module.weight.shape and v.dtype == torch.float32 and v.device.type == "cpu"
        assert float(v.min()) >= 0 and float(v.max()) <= 1 and float(v.max()) >= 0.5
        assert torch.equal(v, b[t.name])


def test_stops_after_saliency_steps_and_removes_hooks(sd, sd_targets):
    calls = []
    h = sd.unet.register_forward_pre_hook(lambda m, a: calls.append(1))
    ticks = []
    try:
        _run(sd, sd_targets, progress=lambda d, n, _message: ticks.append((d, n)))
        assert len(calls) == CFG.saliency_steps
        calls.clear()
        _run(sd, sd_targets, CFG.replace(batch_size=2))
        assert len(calls) == 3 * CFG.saliency_steps  # 6 prompts in 3 chunks
    finally:
        h.remove()
    assert ticks == [(i, 3) for i in (1, 2, 3)]
    for t in sd_targets:
        assert not t.module._forward_hooks
    assert not sd.interrupt

    def boom(done, total, message):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(sd, sd_targets, progress=boom)
    for t in sd_targets:
        assert not t.module._forward_hooks


class _Spy:
    """Forwards to a pipeline and records the keyword arguments of each call."""

    def __init__(self, pipe):
        self._pipe = pipe
        self.calls = []

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def __call__(self, **kw):
        self.calls.append(kw)
        return self._pipe(**kw)


def test_one_seeded_generator_per_prompt(sd, sd_targets):
    spy = _Spy(sd)
    concept_sensitivity(spy, CONCEPT, BASE, [1, 2, 3], [4, 5, 6], CFG, sd_targets, r1=0.05)
    (kw,) = spy.calls
    assert kw["prompt"] == CONCEPT + BASE
    assert [g.initial_seed() for g in kw["generator"]] == [1, 2, 3, 4, 5, 6]
    assert kw["output_type"] == "latent" and kw["num_inference_steps"] == 8
    # a base prompt's seed changes the result
    other = concept_sensitivity(sd, CONCEPT, BASE, [1, 2, 3], [4, 5, 7], CFG, sd_targets, r1=0.05)
    first = concept_sensitivity(sd, CONCEPT, BASE, [1, 2, 3], [4, 5, 6], CFG, sd_targets, r1=0.05)
    assert any(not torch.equal(first[n], other[n]) for n in first)


def test_variants_run_and_differ(sd, sd_targets):
    base = _run(sd, sd_targets)
    for change in (dict(saliency="wanda"), dict(cfg_rows="both")):
        other = _run(sd, sd_targets, CFG.replace(**change))
        assert all(float(v.min()) >= 0 and float(v.max()) <= 1 for v in other.values())
        assert any(not torch.allclose(base[n], other[n]) for n in base), change
    # no guidance: one row per prompt; cfg_rows has no effect then
    g1 = _run(sd, sd_targets, CFG.replace(guidance_scale=1.0))
    g2 = _run(sd, sd_targets, CFG.replace(guidance_scale=1.0, cfg_rows="both"))
    assert all(torch.equal(g1[n], g2[n]) for n in g1)


def test_input_errors(sd, sd_targets):
    with pytest.raises(FIAError, match="one seed per prompt"):
        concept_sensitivity(sd, CONCEPT, BASE, SEEDS[:2], SEEDS, CFG, sd_targets, r1=0.05)
    with pytest.raises(FIAError, match="concept prompts and base prompts"):
        concept_sensitivity(sd, CONCEPT, [], SEEDS, [], CFG, sd_targets, r1=0.05)
    other = find_targets(build_denoiser("pixart-tiny"))
    with pytest.raises(FIAError, match="not a layer of this pipeline"):
        concept_sensitivity(sd, CONCEPT, BASE, SEEDS, SEEDS, CFG, other, r1=0.05)


def test_sdxl():
    pipe = tiny_sdxl_pipeline()
    targets = find_targets(pipe.unet)
    # depths (1, 2), layers_per_block 1: down 1 x 2, mid 2, up 2 x 2 transformer blocks
    assert len(targets) == 2 + 2 + 4
    a = _run(pipe, targets)
    b = _run(pipe, targets, CFG.replace(batch_size=3))
    for t in targets:
        assert a[t.name].shape == t.module.weight.shape
        assert float(a[t.name].min()) >= 0 and float(a[t.name].max()) <= 1
        assert float((a[t.name] - b[t.name]).abs().gt(1e-4).float().mean()) < 2e-3


def test_bfloat16_model_float32_statistics(sd, sd_targets):
    pipe = tiny_sd_pipeline()
    pipe.unet.to(dtype=torch.bfloat16)
    pipe.text_encoder.to(dtype=torch.bfloat16)
    pipe.vae.to(dtype=torch.bfloat16)
    targets = find_targets(pipe.unet)
    a16 = _run(pipe, targets, CFG.replace(saliency_steps=2))
    a32 = _run(sd, sd_targets, CFG.replace(saliency_steps=2))
    for t in targets:
        v = a16[t.name]
        assert v.dtype == torch.float32 and torch.isfinite(v).all()
        assert float(v.min()) >= 0 and float(v.max()) <= 1
        # same random model (seed 0) in bf16: close on average to the float32 result
        assert float((v - a32[t.name]).abs().mean()) < 0.05
