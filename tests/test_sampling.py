"""Known-answer tests for the samplers (against diffusers' schedulers) and the model folders.

Everything here runs on CPU in a few seconds: tiny UNets, a closed-form Gaussian "teacher", and
diffusers' own schedulers as the reference for the samplers.
"""

from dataclasses import asdict

import pytest
import torch
from diffusers import DDIMScheduler, LCMScheduler

from orchestrator.config import UNetConfig
from tests.math_helpers import (  # noqa: F401  (fixtures)
    STUDENT_TIMESTEPS,
    ddim_sample,
    gaussian_x0,
    one_thread,
    schedule_for,
    sd_schedule,
    student_sample,
)
from workers.diffusion.samplers import backward_simulate, renoise, sample_with_scheduler, timestep_batch
from workers.diffusion.schedule import ddpm_scheduler_config, guided
from workers.errors import ModelFolderError
from workers.models.conditioning import ClassLabels
from workers.models.folders import (
    MANIFEST,
    WEIGHTS,
    Denoiser,
    ModelManifest,
    build_unet,
    load_model_folder,
    save_model_folder,
)

# --------------------------------------------------------------------------------------------
# 5. Samplers
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eps_unet():
    """A fixed random epsilon network on 8x8 single-channel images (no classes)."""
    torch.manual_seed(17)
    return build_unet(0, **asdict(UNetConfig())).eval()


def eps_fn_of(unet):
    def eps_fn(x_t, t):
        with torch.no_grad():
            return unet(x_t, t).sample

    return eps_fn


def test_backward_simulate_has_no_graph_even_with_trainable_x0_fn(sd_schedule):
    torch.manual_seed(18)
    unet = build_unet(0, **asdict(UNetConfig()))  # train mode, parameters require grad
    assert all(p.requires_grad for p in unet.parameters())

    def x0_fn(x_t, t):
        out = unet(x_t, t).sample
        assert out.grad_fn is None  # no graph is even built inside backward_simulate
        return sd_schedule.to_x0(out, x_t, t)

    noise = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(19))
    x = backward_simulate(x0_fn, sd_schedule, noise, STUDENT_TIMESTEPS, 3, torch.Generator().manual_seed(20))
    assert x.grad_fn is None and not x.requires_grad
    # The student then trains on that state with a graph of its own.
    assert sd_schedule.to_x0(unet(x, timestep_batch(249, x)).sample, x, timestep_batch(249, x)).grad_fn is not None


def test_backward_simulate_k0_returns_the_noise(sd_schedule):
    calls = []

    def x0_fn(x_t, t):
        calls.append(t)
        return x_t

    noise = torch.randn((2, 1, 8, 8), requires_grad=True)
    x = backward_simulate(x0_fn, sd_schedule, noise, STUDENT_TIMESTEPS, 0)
    assert torch.equal(x, noise) and x.grad_fn is None and not calls


def test_backward_simulate_known_answer_and_determinism(sd_schedule, eps_unet):
    eps_fn = eps_fn_of(eps_unet)

    def x0_fn(x_t, t):
        return sd_schedule.to_x0(eps_fn(x_t, t), x_t, t)

    noise = torch.randn((3, 1, 8, 8), generator=torch.Generator().manual_seed(21))
    run = lambda k, seed: backward_simulate(
        x0_fn, sd_schedule, noise, STUDENT_TIMESTEPS, k, torch.Generator().manual_seed(seed)
    )
    assert torch.equal(run(3, 22), run(3, 22))
    assert not torch.allclose(run(3, 22), run(3, 23))
    # k = 2 by hand: x0 at 999, renoise to 749 with the generator's first draw, x0 at 749, renoise to 499.
    g = torch.Generator().manual_seed(22)
    x = noise
    for t, t_next in ((999, 749), (749, 499)):
        x0 = x0_fn(x, timestep_batch(t, x))
        x = sd_schedule.add_noise(x0, torch.randn(x0.shape, generator=g), timestep_batch(t_next, x))
    torch.testing.assert_close(run(2, 22), x, rtol=0, atol=0)
    # renoise is the forward process at t_next with fresh N(0, I) noise.
    g1, g2 = torch.Generator().manual_seed(24), torch.Generator().manual_seed(24)
    x0 = torch.randn((2, 1, 8, 8))
    assert torch.equal(
        renoise(sd_schedule, x0, 499, g1),
        sd_schedule.add_noise(x0, torch.randn(x0.shape, generator=g2), timestep_batch(499, x0)),
    )


def test_student_sample_matches_diffusers_lcm_scheduler(sd_schedule, eps_unet):
    """Our few-step student loop is diffusers' LCMScheduler with explicit timesteps.

    LCM's boundary condition: c_skip = 0.25 / ((10 t)^2 + 0.25) <= 4.1e-8 and 1 - c_out <= 2.1e-8 at
    t >= 249, below float32's resolution (6e-8 relative), so LCM's `denoised` is the x0 estimate.
    Its fresh noise is one randn(shape, generator) per non-final step, the same draws in the same
    order as `renoise`: both generators must end in the same state. Tolerance: float32 against our
    float64 conversions, amplified by 1/alpha_999 = 14.6 at the first step; observed max abs
    difference 7.6e-6 on outputs of magnitude ~50 (1.5e-7 relative); we allow 1e-5 relative.
    """
    config = ddpm_scheduler_config()
    scheduler = LCMScheduler.from_config(config)
    assert (
        not scheduler.config.clip_sample
    )  # LCM's own default: DDPM's clip_sample is a "default value" not carried over
    scheduler.set_timesteps(timesteps=STUDENT_TIMESTEPS)
    assert scheduler.timesteps.tolist() == STUDENT_TIMESTEPS
    c_skip, c_out = scheduler.get_scalings_for_boundary_condition_discrete(249)
    assert c_skip < 5e-8 and abs(1 - c_out) < 5e-8

    eps_fn = eps_fn_of(eps_unet)
    noise = torch.randn((4, 1, 8, 8), generator=torch.Generator().manual_seed(25))
    ours_g, theirs_g = torch.Generator().manual_seed(26), torch.Generator().manual_seed(26)
    ours = student_sample(
        lambda x, t: sd_schedule.to_x0(eps_fn(x, t), x, t), sd_schedule, noise, STUDENT_TIMESTEPS, ours_g
    )
    theirs = sample_with_scheduler(eps_fn, scheduler, noise, theirs_g)
    assert torch.equal(ours_g.get_state(), theirs_g.get_state())  # same number of draws
    scale = theirs.abs().max().item()
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5 * scale)
    # The noise matters: a different seed on one side is far outside that tolerance.
    scheduler.set_timesteps(timesteps=STUDENT_TIMESTEPS)
    other = sample_with_scheduler(eps_fn, scheduler, noise, torch.Generator().manual_seed(27))
    assert (other - ours).abs().max().item() > 1e-2 * scale


def test_ddim_sample_matches_diffusers_ddim_scheduler(sd_schedule, eps_unet):
    """Deterministic DDIM, 10 trailing steps: set_alpha_to_one=True makes diffusers' last step return x0.

    Observed max abs difference 1.1e-5 on outputs of magnitude ~44 (2.6e-7 relative); 1e-5 relative allowed.
    """
    config = ddpm_scheduler_config()
    scheduler = DDIMScheduler.from_config(config, timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=True)
    scheduler.set_timesteps(10)
    timesteps = scheduler.timesteps.tolist()
    assert timesteps == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    eps_fn = eps_fn_of(eps_unet)
    noise = torch.randn((4, 1, 8, 8), generator=torch.Generator().manual_seed(28))
    ours = ddim_sample(lambda x, t: sd_schedule.to_x0(eps_fn(x, t), x, t), sd_schedule, noise, timesteps)
    theirs = sample_with_scheduler(eps_fn, scheduler, noise)
    scale = theirs.abs().max().item()
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5 * scale)
    # Without set_alpha_to_one diffusers' last step stops at abar[0] < 1 (not x0): visibly different.
    other = DDIMScheduler.from_config(config, timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=False)
    other.set_timesteps(10)
    assert (sample_with_scheduler(eps_fn, other, noise) - ours).abs().max().item() > 1e-4 * scale  # observed 9e-4


def test_ddim_with_exact_gaussian_teacher_follows_the_probability_flow(sd_schedule):
    """With the exact Gaussian x0 predictor, DDIM converges to the Gaussian's probability-flow map.

    For data N(mu, s^2 I) the ODE is linear: x_T maps to mu + s (x_T - alpha_T mu) / sqrt(alpha_T^2 s^2 + sigma_T^2).
    DDIM is first order: observed max error 0.0067 with all 1000 timesteps, 0.028 with 200, 0.20 with 20.
    """
    mu, s = torch.tensor([0.5, -0.5, 1.0, 0.0], dtype=torch.float64).view(1, 1, 2, 2), 0.5
    x0_fn = lambda x, t: gaussian_x0(sd_schedule, x, t, mu, s)
    noise = torch.randn((256, 1, 2, 2), dtype=torch.float64, generator=torch.Generator().manual_seed(29))
    # One step from t = 999 is the posterior mean itself.
    assert torch.equal(ddim_sample(x0_fn, sd_schedule, noise, [999]), x0_fn(noise, timestep_batch(999, noise)))
    alpha, sigma = sd_schedule.alpha_sigma(torch.tensor([999]))
    flow = mu + s * (noise - alpha * mu) / (alpha**2 * s**2 + sigma**2).sqrt()
    errors = [
        (ddim_sample(x0_fn, sd_schedule, noise, list(range(999, -1, -stride))) - flow).abs().max().item()
        for stride in (1, 5, 50)
    ]
    assert errors[0] < 0.02 and errors[0] < errors[1] < errors[2], errors


# --------------------------------------------------------------------------------------------
# 6. Model folders and the Denoiser
# --------------------------------------------------------------------------------------------


@pytest.fixture()
def saved_folder(tmp_path):
    torch.manual_seed(31)
    unet = build_unet(10, **asdict(UNetConfig()))
    manifest = ModelManifest(
        kind="student", num_classes=10, guidance_scale=1.0, timesteps=STUDENT_TIMESTEPS, method="dmd2"
    )
    path = save_model_folder(tmp_path / "model", unet, ddpm_scheduler_config(), manifest)
    return path, unet, manifest


def test_model_folder_round_trips_exactly(saved_folder):
    path, unet, manifest = saved_folder
    folder = load_model_folder(path)
    assert folder.manifest == manifest
    original, loaded = unet.state_dict(), folder.unet.state_dict()
    assert original.keys() == loaded.keys()
    assert all(torch.equal(original[name], loaded[name]) for name in original)
    assert folder.scheduler_config == ddpm_scheduler_config()
    assert torch.equal(folder.schedule.alphas_cumprod, schedule_for().alphas_cumprod)
    x = torch.randn(2, 1, 8, 8)
    t, labels = torch.tensor([10, 900]), torch.tensor([3, 10])
    with torch.no_grad():
        assert torch.equal(unet.eval()(x, t, class_labels=labels).sample, folder.unet(x, t, class_labels=labels).sample)


def test_pickled_weights_are_refused_without_unpickling(saved_folder, monkeypatch):
    path, unet, _ = saved_folder
    (path / "unet" / WEIGHTS).unlink()
    torch.save(unet.state_dict(), path / "unet" / "diffusion_pytorch_model.bin")

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load was called on a model folder")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(ModelFolderError, match="pickle") as error:
        load_model_folder(path)
    assert "diffusion_pytorch_model.bin" in str(error.value)


def test_folder_without_manifest_is_refused(saved_folder):
    path, _, _ = saved_folder
    (path / MANIFEST).unlink()
    with pytest.raises(ModelFolderError, match=MANIFEST):
        load_model_folder(path)


def test_missing_folder_is_refused(tmp_path):
    with pytest.raises(ModelFolderError, match="does not exist"):
        load_model_folder(tmp_path / "nowhere")


def test_denoiser_classifier_free_guidance_by_hand():
    torch.manual_seed(32)
    unet = build_unet(10, **asdict(UNetConfig())).double().eval()
    schedule = schedule_for()
    denoiser = Denoiser(unet, schedule, ClassLabels(10))
    g = torch.Generator().manual_seed(33)
    x_t = torch.randn((3, 1, 8, 8), generator=g, dtype=torch.float64)
    t, labels = torch.tensor([50, 500, 999]), torch.tensor([1, 4, 9])
    with torch.no_grad():
        cond = unet(x_t, t, class_labels=labels).sample
        uncond = unet(x_t, t, class_labels=torch.full_like(labels, 10)).sample
        x0_cond = schedule.to_x0(cond, x_t, t)
        assert torch.equal(denoiser.x0(x_t, t, labels, guidance_scale=1.0), x0_cond)
        for scale in (0.0, 1.75, 8.0):
            by_hand = schedule.to_x0(uncond + scale * (cond - uncond), x_t, t)
            torch.testing.assert_close(denoiser.x0(x_t, t, labels, guidance_scale=scale), by_hand, rtol=0, atol=1e-10)
        # Guidance does something: scale 8 differs from the conditional estimate.
        assert (denoiser.x0(x_t, t, labels, guidance_scale=8.0) - x0_cond).abs().max() > 1e-3
    assert torch.equal(guided(torch.zeros(2), torch.ones(2), 3.0), torch.full((2,), 3.0))


def test_denoiser_without_classes_ignores_guidance():
    torch.manual_seed(34)
    unet = build_unet(0, **asdict(UNetConfig())).eval()
    denoiser = Denoiser(unet, schedule_for(), ClassLabels(0))
    x_t, t = torch.randn(2, 1, 8, 8), torch.tensor([100, 800])
    with torch.no_grad():
        assert torch.equal(denoiser.output(x_t, t, None, guidance_scale=5.0), unet(x_t, t).sample)
