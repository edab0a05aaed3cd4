"""The memory estimate (fia.memory): its tracer against hand counts and real tensors, its terms, the pre-flight check."""

from __future__ import annotations

import pytest
import torch

from fia.errors import FIAError
from fia.memory import (
    _LiveBytes,
    causal_estimate,
    check_memory,
    estimate_erase,
    paper_estimate,
    parse_memory,
    rewrite_estimate,
    trace_call,
)
from fia.plan import plan_erase
from fia.targets import find_targets
from tests.helpers import cli_refuses, load_tiny, small_config, tiny_causal_config

pytestmark = pytest.mark.usefixtures("one_thread")


def test_live_bytes_counts_each_storage_once_until_its_last_tensor_goes():
    with _LiveBytes(skip=[]) as live:
        a = torch.empty(1000, device="meta")  # 4,000 bytes
        b = a * 2  # 4,000 more: peak 8,000
        view = b.view(10, 100)  # the same storage: nothing new
        del a  # 4,000 left
        c = torch.empty(250, dtype=torch.float64, device="meta")  # 2,000: 6,000, under the peak
        del b
        now_with_view = live.now  # b's storage lives on in its view
        del view, c
    assert live.peak == 8000
    assert now_with_view == 6000
    assert live.now == 0


def _tiny_unet(tiny_dir):
    return load_tiny(tiny_dir).unet


@pytest.mark.parametrize("mode", ["forward", "evidence"])
def test_the_meta_trace_equals_the_same_call_on_real_tensors(tiny_dir, mode):
    """The trace (meta tensors, attention counted as a fused kernel) sees the bytes CPU tensors take in the same call."""
    unet = _tiny_unet(tiny_dir)
    rows, latent = 3, 8
    traced = trace_call(unet, rows=rows, latent=latent, dtype=torch.float32, mode=mode, exact=True)
    cfg = unet.config
    x = torch.randn(rows, cfg.in_channels, latent, latent, requires_grad=mode == "evidence")
    t, emb = torch.full((rows,), 500), torch.randn(rows, 77, cfg.cross_attention_dim)
    params = list(unet.parameters())
    for p in params:
        p.requires_grad_(False)
    with _LiveBytes(skip=params) as live:  # CPU: torch runs its fused attention kernel
        if mode == "forward":
            with torch.no_grad():
                unet(x, t, encoder_hidden_states=emb)
        else:
            out = unet(x, t, encoder_hidden_states=emb).sample
            torch.autograd.grad(out.sum(), [x])
            del out
    assert traced.peak == live.peak
    assert traced.parameters == sum(p.numel() * 4 for p in params)


def test_traces_are_linear_in_the_rows(tiny_dir):
    unet = _tiny_unet(tiny_dir)
    for mode in ("forward", "sampler"):
        exact = trace_call(unet, rows=5, latent=8, dtype=torch.float32, mode=mode, exact=True)
        linear = trace_call(unet, rows=5, latent=8, dtype=torch.float32, mode=mode)
        assert linear == exact


def test_the_causal_estimate_s_weight_terms_follow_the_targets(tiny_dir):
    unet = _tiny_unet(tiny_dir)
    shapes = [tuple(t.module.weight.shape) for t in find_targets(unet, "ffn2")]
    n_weights = sum(o * i for o, i in shapes)
    cfg = tiny_causal_config(repair={"concept_weight": 1.0})
    est = causal_estimate(unet, cfg, concepts=3, other_parameters=1000)
    assert est.terms["parameters"] == sum(p.numel() * 4 for p in unet.parameters()) + 1000
    assert est.terms["unedited targets"] == 4 * n_weights
    assert est.terms["repair Gram matrices"] == 2 * 8 * sum(i * i for _, i in shapes)
    assert est.total == sum(est.terms.values())
    lasting = est.total - est.phases[est.peak_phase]
    assert est.peak_phase == max(est.phases, key=est.phases.get)
    # each phase's own terms, the round's masks and anchor scores included where they are alive
    for phase, ws in (("gradient pass", 4 + 4), ("selection", 30)):
        rounds = n_weights * (1 + 3) + 4 * n_weights
        assert est.phases[phase] >= rounds + ws * n_weights
    assert est.phases["repair solve"] == n_weights + 4 * 8 * max(i for _, i in shapes) ** 2
    assert lasting == sum(v for k, v in est.terms.items() if k in ("parameters", "unedited targets", "text embeddings",
                                                                  "repair Gram matrices"))  # fmt: skip
    without = causal_estimate(unet, cfg.replace(anchor_weight=0.0, repair=None), concepts=3)
    assert "repair Gram matrices" not in without.terms and set(without.phases) == {"gradient pass", "selection"}
    assert without.phases["selection"] == n_weights * (1 + 3) + 30 * n_weights  # no anchor scores


def test_estimates_grow_with_the_batch_and_the_latent(tiny_dir):
    unet = _tiny_unet(tiny_dir)
    causal = [causal_estimate(unet, tiny_causal_config(batch_size=b), concepts=1).total for b in (1, 2, 4, 8)]
    assert causal == sorted(causal) and len(set(causal)) == 4
    by_latent = [causal_estimate(unet, tiny_causal_config(batch_size=2), concepts=1, latent=s).total for s in (8, 16)]
    assert by_latent[0] < by_latent[1]
    paper = [paper_estimate(unet, small_config(), prompts=8, batch_size=8, latent=s).total for s in (8, 16)]
    assert paper[0] < paper[1]
    # all prompts in one batch against chunks: chunks keep every step's Eq. 2 statistics
    one_batch = paper_estimate(unet, small_config(), prompts=8).terms["Eq. 2 statistics"]
    chunked = paper_estimate(unet, small_config(batch_size=2), prompts=8).terms["Eq. 2 statistics"]
    assert chunked > one_batch


def test_half_precision_halves_the_parameters_and_the_activations(tiny_dir):
    unet = _tiny_unet(tiny_dir)
    full = trace_call(unet, rows=2, latent=8, dtype=torch.float32, mode="evidence")
    half = trace_call(unet, rows=2, latent=8, dtype=torch.float16, mode="evidence")
    assert half.parameters * 2 == full.parameters
    assert half.peak < full.peak  # a few float32 buffers (attention's log-sum-exp) stay


def test_parse_memory():
    assert parse_memory("2GB") == 2 * 10**9
    assert parse_memory("1.5 GiB") == int(1.5 * 2**30)
    assert parse_memory("800mb") == 800 * 10**6
    assert parse_memory(4096) == 4096
    for bad in ("2", "GB", "-1GB", "0GB", "2 gigs"):
        with pytest.raises(FIAError, match="--max-memory"):
            parse_memory(bad)


def test_check_memory_names_the_largest_batch_size_that_fits(tiny_dir):
    pipe = load_tiny(tiny_dir)
    cfg = tiny_causal_config(batch_size=8, concept_prompts_per_concept=8, anchor_prompts=8)
    plan = plan_erase(["golf ball"], cfg)
    at = {b: estimate_erase(pipe, cfg, 1, batch_size=b).total for b in (3, 4, 8)}
    assert check_memory(pipe, plan, at[8]).total == at[8]  # exactly enough: it passes
    with pytest.raises(FIAError) as err:
        check_memory(pipe, plan, (at[3] + at[4]) // 2)  # 3 prompts fit, 4 do not
    message = str(err.value)
    assert "--batch-size 3 " in message and "the causal variant needs about" in message and "\n" not in message
    with pytest.raises(FIAError, match="no batch size fits"):
        check_memory(pipe, plan, 1000)


def test_the_paper_variant_is_checked_too(tiny_dir):
    pipe = load_tiny(tiny_dir)
    plan = plan_erase(["golf ball"], small_config())
    with pytest.raises(FIAError, match="the paper variant needs about"):
        check_memory(pipe, plan, "1MB")


def test_what_the_estimate_cannot_read_is_not_checked_rather_than_crashed_on(tiny_dir):
    """A denoiser without a diffusers config (no ``sample_size``) or an object that is no pipeline: ``None``."""
    pipe = load_tiny(tiny_dir)
    bare = torch.nn.Sequential(torch.nn.Linear(4, 4))  # a denoiser without a config
    for config in (tiny_causal_config(), small_config()):
        assert estimate_erase(pipe, config, 1, prompts=4) is not None
        assert estimate_erase(bare, config, 1, prompts=4) is None
        assert estimate_erase(object(), config, 1, prompts=4) is None
    assert causal_estimate(bare, tiny_causal_config(), concepts=1) is None
    assert paper_estimate(bare, small_config(), prompts=4) is None


def test_erase_stops_before_any_work_when_it_cannot_fit(tiny_dir, tmp_path):
    out = tmp_path / "out"
    args = ["erase", "--concepts", "golf ball", "--out", str(out), "--model", str(tiny_dir), "--task", "object",
            "--variant", "causal", "--steps", "2", "--score-steps", "1", "--rounds", "1", "--max-memory", "1MB"]  # fmt: skip
    cli_refuses(args, out, "is available (--max-memory); no batch size fits")
    rewrite = args[: args.index("--variant")] + ["--variant", "rewrite", "--max-memory", "1MB"]
    cli_refuses(rewrite, out, "the rewrite variant needs about")


def test_a_bad_max_memory_is_refused_before_the_model_loads(tmp_path):
    out = tmp_path / "out"
    args = ["erase", "--concepts", "golf ball", "--out", str(out), "--model", str(tmp_path / "nowhere"),
            "--task", "object", "--max-memory", "lots"]  # fmt: skip
    cli_refuses(args, out, "--max-memory 'lots' is not an amount of memory")


def test_the_trace_runs_under_inference_mode(tiny_dir):
    """A caller inside torch.inference_mode() (a benchmark harness, say) still gets the backward trace."""
    from fia.memory import _trace_cached

    unet = _tiny_unet(tiny_dir)
    _trace_cached.cache_clear()
    with torch.inference_mode():
        inside = trace_call(unet, rows=7, latent=8, dtype=torch.float32, mode="evidence", exact=True)
    _trace_cached.cache_clear()
    outside = trace_call(unet, rows=7, latent=8, dtype=torch.float32, mode="evidence", exact=True)
    assert inside == outside and inside.saved > 0


def test_the_rewrite_estimate_holds_every_kept_group_and_covers_what_a_real_erase_holds():
    """On ShapeWorld 2 (33 kept groups, one per kept kind, the scenes, ...) the estimate's terms are the
    groups' float64 Gram matrices and the phases of the module docstring, and its total, less the
    parameters, is at least the storage bytes that a real erase (small settings) holds at its peak,
    counted op by op by the tracer's own counter, and not far above them."""
    import fia
    from fia.config import FIARewriteConfig, RewriteConfig
    from fia.memory import _kept_groups
    from fia.shapeworld import load_pipeline

    pipe = load_pipeline()
    rc = RewriteConfig(concept_weight=0.04, damping=0.03, balance_rounds=2, keep_prompts_per_kind=1,
                       concept_prompts_per_concept=4, concept_trajectory=True, negative_guidance=1.0)
    cfg = FIARewriteConfig(task="shapeworld", num_inference_steps=2, rewrite=rc).validate()
    cfg = fia.tasks.task_of(cfg).settle(cfg, pipe)
    groups = _kept_groups(cfg, ["star", "arrow"])
    assert groups == 33  # 30 kept kinds, the object-less scenes, the styles, burning
    est = estimate_erase(pipe, cfg, 2, kept_groups=groups)
    widths = [t.module.weight.shape[1] for t in find_targets(pipe.unet, "ffn2")]
    assert est.variant == "rewrite" and est.batch_size == 48  # ShapeWorld's small latents: 48 paired prompts
    assert est.terms["kept Gram matrices"] == 33 * 8 * sum(i * i for i in widths)
    assert set(est.phases) == {"kept pass", "paired passes", "solve"} and est.total == sum(est.terms.values())
    assert est == rewrite_estimate(pipe.unet, cfg, kept_groups=33, other_parameters=est.terms["parameters"]
                                   - sum(p.numel() * 4 for p in pipe.unet.parameters()))  # fmt: skip
    held = [t for m in pipe.components.values() if isinstance(m, torch.nn.Module) for t in (*m.parameters(), *m.buffers())]
    with torch.no_grad(), _LiveBytes(skip=held) as live:
        fia.erase(pipe, ["star", "arrow"], cfg)
    beyond_parameters = est.total - est.terms["parameters"]
    assert live.peak <= beyond_parameters <= 2 * live.peak, (live.peak, est.summary())


def test_the_rewrite_is_checked_before_any_work(tiny_dir):
    from fia.config import FIARewriteConfig, RewriteConfig

    pipe = load_tiny(tiny_dir)
    rc = RewriteConfig(balance_rounds=0, keep_prompts_per_kind=1, concept_prompts_per_concept=2)
    cfg = FIARewriteConfig(task="object", num_inference_steps=2, guidance_scale=3.0, rewrite=rc).validate()
    plan = plan_erase(["golf ball"], cfg)
    est = estimate_erase(pipe, cfg, 1)
    assert est.terms["kept Gram matrices"] == 8 * sum(t.module.weight.shape[1] ** 2 for t in find_targets(pipe.unet, "ffn2"))
    assert est.batch_size == 48  # the tiny model's 8 px latents: the small latents' batches
    at_sd_size = rewrite_estimate(pipe.unet, cfg, latent=64)
    assert at_sd_size.batch_size == 16 and at_sd_size.phases["paired passes"] > est.phases["paired passes"]
    assert rewrite_estimate(pipe.unet, cfg.replace(batch_size=5)).batch_size == 5
    assert check_memory(pipe, plan, est.total).total == est.total
    with pytest.raises(FIAError, match="the rewrite variant needs about"):
        check_memory(pipe, plan, est.total - 1)
