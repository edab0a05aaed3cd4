"""fia.sampling: the seeding rule, image generation, early-stopped sampling and hooks."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from fia import sampling
from fia.errors import FIAError
from fia.targets import find_targets
from fia.testing import tiny_sd_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread

STEPS = 4  # schedule length used throughout (the tiny pipeline is fast at any length)


@pytest.fixture(scope="module")
def pipe():
    return tiny_sd_pipeline()


def _noise(seed):
    """The initial latent the seeding rule promises for ``seed`` (tiny pipeline: 4 x 8 x 8)."""
    return torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ seeding
def test_generators_one_cpu_generator_per_seed():
    gens = sampling.generators([5, 5, 9])
    assert [g.initial_seed() for g in gens] == [5, 5, 9]
    assert all(g.device.type == "cpu" for g in gens)
    draws = [torch.randn(3, generator=g) for g in gens]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])


def test_image_does_not_depend_on_its_batch(pipe):
    kw = {"num_inference_steps": STEPS, "guidance_scale": 3.0, "output_type": "np"}
    alone = sampling.generate(pipe, ["a blue ball"], [8], **kw)[0]
    in_batch = sampling.generate(pipe, ["a red cube", "a blue ball", "a tree"], [7, 8, 9], **kw)[1]
    other_neighbours = sampling.generate(pipe, ["a blue ball", "a house"], [8, 1], **kw)[0]
    # batched convolutions may differ from single ones in the last bits only
    np.testing.assert_allclose(in_batch, alone, rtol=0, atol=1e-5)
    np.testing.assert_allclose(other_neighbours, alone, rtol=0, atol=1e-5)
    # and the image is the one drawn from seed 8's noise alone
    with torch.no_grad():
        reference = pipe(prompt=["a blue ball"], latents=_noise(8), num_inference_steps=STEPS,
                         guidance_scale=3.0, output_type="np").images[0]
    np.testing.assert_allclose(alone, reference, rtol=0, atol=1e-6)
    other_seed = sampling.generate(pipe, ["a blue ball"], [9], **kw)[0]
    assert np.abs(other_seed - alone).max() > 1e-3


def test_generate_checks_one_seed_per_prompt(pipe):
    with pytest.raises(FIAError, match="one seed per prompt"):
        sampling.generate(pipe, ["a", "b"], [1], num_inference_steps=2, guidance_scale=1.0)


def test_the_three_image_helpers_agree(pipe):
    """PIL (fia.models), numpy (evaluation) and tensor (ShapeWorld) outputs are the same images."""
    from fia.evaluate.generate import EvalItem, GenerationSettings, run_pipe
    from fia.models import generate_images
    from fia.shapeworld.evaluate import generate as shapeworld_generate

    prompt, seeds = "a green star", [3, 4]
    pil = generate_images(pipe, prompt, seeds, num_inference_steps=STEPS, guidance_scale=2.0)
    arr = run_pipe(
        pipe,
        [EvalItem(id=str(s), prompt=prompt, seed=s) for s in seeds],
        GenerationSettings(num_inference_steps=STEPS, guidance_scale=2.0),
    )
    pt = shapeworld_generate(pipe, [prompt] * 2, seeds, batch_size=1,
                             num_inference_steps=STEPS, guidance_scale=2.0, height=16, width=16)
    assert arr.shape == (2, 16, 16, 3) and tuple(pt.shape) == (2, 3, 16, 16)
    np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), arr, rtol=0, atol=1e-5)
    as_uint8 = (arr * 255).round().astype(np.uint8)
    for image, expected in zip(pil, as_uint8):
        assert np.abs(np.asarray(image).astype(int) - expected.astype(int)).max() <= 1


# ------------------------------------------------------------------ first_steps
def _manual_latents(pipe, prompt, seed, k):
    """The latents after ``k`` unguided DDIM steps, written out without the pipeline's loop."""
    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.set_timesteps(STEPS)
    with torch.no_grad():
        emb = pipe.encode_prompt([prompt], torch.device("cpu"), 1, False)[0]
        latents = _noise(seed) * scheduler.init_noise_sigma
        for t in scheduler.timesteps[:k]:
            eps = pipe.unet(scheduler.scale_model_input(latents, t), t, encoder_hidden_states=emb).sample
            latents = scheduler.step(eps, t, latents).prev_sample
    return latents


@pytest.mark.parametrize("k", [1, 3])
def test_first_steps_runs_exactly_k_steps(pipe, k):
    calls = []
    handle = pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    ticks = []
    try:
        latents = sampling.first_steps(pipe, k, STEPS, on_step=ticks.append, prompt=["a golf ball"],
                                       guidance_scale=1.0, generator=sampling.generators([5]))
    finally:
        handle.remove()
    assert len(calls) == k  # one denoiser call per step, none after the stop
    assert ticks == list(range(1, k + 1))
    assert not pipe.interrupt  # the flag is cleared for the next call
    torch.testing.assert_close(latents, _manual_latents(pipe, "a golf ball", 5, k), rtol=0, atol=1e-5)


def test_first_steps_clears_the_flag_when_the_callback_raises(pipe):
    def boom(done):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sampling.first_steps(pipe, 2, STEPS, on_step=boom, prompt=["x"], guidance_scale=1.0)
    assert not pipe.interrupt


def test_first_steps_refuses_a_step_count_outside_the_schedule():
    def never_called(**kw):
        raise AssertionError("the pipeline must not run")

    for steps in (0, STEPS + 1, 1.5):
        with pytest.raises(FIAError, match=f"from 1 to {STEPS}"):
            sampling.first_steps(never_called, steps, STEPS)


class _DeafPipeline:
    """Runs every step of its schedule whatever its interrupt flag says."""

    _interrupt = False

    def __call__(self, num_inference_steps, callback_on_step_end, **kw):
        for i in range(num_inference_steps):
            callback_on_step_end(self, i, i, {"latents": torch.zeros(1)})


def test_first_steps_reports_a_pipeline_that_ignores_the_interrupt():
    deaf = _DeafPipeline()
    with pytest.raises(FIAError, match="ran 5 steps where 2 were asked for"):
        sampling.first_steps(deaf, 2, 5)
    assert deaf._interrupt is False


# ------------------------------------------------------------------ capture
def test_capture_calls_the_hook_with_names_and_removes_it(pipe):
    targets = find_targets(pipe.unet)
    seen = []
    with sampling.capture(targets, lambda name, module, args, out: seen.append((name, module)),
                          within=pipe.unet):
        assert all(len(t.module._forward_hooks) == 1 for t in targets)
        sampling.first_steps(pipe, 2, STEPS, prompt=["a"], guidance_scale=1.0)
    # each target layer ran once per step, and reported under its own name
    assert sorted(name for name, _ in seen) == sorted([t.name for t in targets] * 2)
    modules = {t.name: t.module for t in targets}
    assert all(module is modules[name] for name, module in seen)
    assert all(not t.module._forward_hooks for t in targets)


def test_capture_removes_hooks_when_the_body_raises():
    layers = {"a": nn.Linear(2, 2), "b": nn.Linear(2, 2)}
    with pytest.raises(RuntimeError, match="inside"), sampling.capture(layers, lambda *a: None):
        assert all(len(m._forward_hooks) == 1 for m in layers.values())
        raise RuntimeError("inside")
    assert all(not m._forward_hooks for m in layers.values())


def _ignore(*args):
    pass


def test_capture_refuses_what_it_cannot_hook_and_attaches_nothing():
    good = nn.Linear(2, 2)
    not_a_module = {"good": good, "proj": torch.zeros(2)}
    with pytest.raises(FIAError, match="cannot watch 'proj'.*Tensor"), sampling.capture(not_a_module, _ignore):
        pass
    assert not good._forward_hooks
    model = nn.Sequential(nn.Linear(2, 2))
    stranger = nn.Linear(2, 2)
    with pytest.raises(FIAError, match="target 0 is not a layer"), sampling.capture({"0": stranger}, _ignore, within=model):
        pass
    assert not stranger._forward_hooks and not model[0]._forward_hooks
    with pytest.raises(FIAError, match="no layers to watch"), sampling.capture({}, _ignore):
        pass
