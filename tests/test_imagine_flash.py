"""Imagine Flash's pieces on known answers: gamma(t), SRL target and loss, noise correction, backward distillation."""

import json
from dataclasses import asdict

import pytest
import torch
from diffusers import DDIMScheduler

from orchestrator.config import UNetConfig
from tests.math_helpers import STUDENT_TIMESTEPS, gaussian_x0, one_thread, schedule_for, sd_schedule, student_sample  # noqa: F401  (fixtures)
from workers.diffusion.imagine_flash import shifted_timesteps, srl_loss, srl_target, teacher_steps
from workers.diffusion.noise_correction import NoiseCorrectedDDIMScheduler
from workers.diffusion.samplers import backward_simulate, sample_with_scheduler
from workers.diffusion.schedule import ddpm_scheduler_config
from workers.errors import UserError
from workers.models.folders import build_unet

THREE_STEPS = [999, 666, 333]


@pytest.fixture(scope="module")
def eps_unet():
    torch.manual_seed(5)
    return build_unet(0, **asdict(UNetConfig())).eval()


def x0_fn_of(unet, schedule):
    def x0_fn(x_t, t):
        return schedule.to_x0(unet(x_t, t).sample, x_t, t)

    return x0_fn


@pytest.mark.parametrize(("scale", "shift"), [(1.0, 0.0), (0.5, 100.0), (0.8, -50.0), (2.0, 10.0)])
def test_gamma_is_increasing_and_within_range(scale, shift):
    t = torch.arange(0, 1000)
    gamma = shifted_timesteps(t, scale, shift, 0, 1000)
    assert gamma.dtype == torch.long and gamma.min() >= 0 and gamma.max() <= 999
    assert (gamma[1:] >= gamma[:-1]).all()  # non-decreasing everywhere (clipping makes plateaus) ...
    unclipped = (scale * t + shift > 0) & (scale * t + shift < 999)
    assert (
        gamma[1:][unclipped[1:] & unclipped[:-1]] > gamma[:-1][unclipped[1:] & unclipped[:-1]]
    ).any()  # ... and rising inside
    assert gamma[500].item() == min(max(round(scale * 500 + shift), 0), 999)


def test_gamma_jitter_stays_within_its_width_and_range():
    t = torch.full((5000,), 500)
    gamma = shifted_timesteps(t, 1.0, 0.0, 7, 1000, torch.Generator().manual_seed(0))
    assert set(gamma.tolist()) == set(range(493, 508))  # every offset in -7..7 drawn, nothing outside
    edge = shifted_timesteps(torch.full((1000,), 999), 1.0, 0.0, 7, 1000, torch.Generator().manual_seed(0))
    assert edge.max() == 999 and edge.min() >= 992


def test_teacher_steps_go_down_from_gamma():
    steps = teacher_steps(torch.tensor([900, 30]), 3)
    assert [s.tolist() for s in steps] == [[900, 30], [600, 20], [300, 10]]


def test_srl_target_carries_no_gradient_and_the_loss_reaches_the_student(sd_schedule, eps_unet):
    x0_student = torch.randn(4, 1, 8, 8, requires_grad=True)
    gamma = torch.tensor([100, 300, 600, 900])
    target = srl_target(
        x0_fn_of(eps_unet, sd_schedule), sd_schedule, x0_student * 2, gamma, 2, torch.Generator().manual_seed(1)
    )
    assert not target.requires_grad and target.grad_fn is None
    loss = srl_loss(x0_student, target)
    loss.backward()
    # The gradient is exactly that of mean((x0 - const)^2): nothing flowed back through the target.
    torch.testing.assert_close(x0_student.grad, 2 * (x0_student.detach() - target) / x0_student.numel())


def test_srl_target_with_an_exact_gaussian_teacher(sd_schedule):
    """With k = 1 the target is the teacher's posterior mean E[x0 | chi] at chi = alpha x0 + sigma eps:
    near the student's x0 at low gamma, pulled to the data mean at high gamma."""
    mu, s = 0.5, 0.2
    teacher = lambda x_t, t: gaussian_x0(sd_schedule, x_t, t, mu, s)  # noqa: E731
    x0 = torch.full((256, 1, 4, 4), -1.0, dtype=torch.float64)
    for gamma, mean in ((0, -0.97), (999, mu)):
        gammas = torch.full((256,), gamma)
        target = srl_target(teacher, sd_schedule, x0, gammas, 1, torch.Generator().manual_seed(2))
        eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        torch.testing.assert_close(
            target, gaussian_x0(sd_schedule, sd_schedule.add_noise(x0, eps, gammas), gammas, mu, s)
        )
        assert abs(target.mean().item() - mean) < 0.02


def test_noise_correction_first_step_uses_the_initial_noise_later_steps_equal_ddim(sd_schedule, eps_unet):
    config = ddpm_scheduler_config()
    corrected = NoiseCorrectedDDIMScheduler.from_config(config, noise_correction=True)
    corrected.set_timesteps(timesteps=STUDENT_TIMESTEPS)
    noise = torch.randn((3, 1, 8, 8), generator=torch.Generator().manual_seed(3))
    t0 = torch.full((3,), 999)
    with torch.no_grad():
        out = eps_unet(noise, t0).sample
    x0 = sd_schedule.to_x0(out, noise, t0)
    step = corrected.step(out, 999, noise)
    alpha, sigma = sd_schedule.alpha_sigma(torch.full((3,), 749))
    torch.testing.assert_close(
        step.prev_sample, (alpha * x0.double() + sigma * noise.double()).float()
    )  # x_T, not eps_hat
    plain = (alpha * x0.double() + sigma * out.double()).float()  # DDIM's first step: the predicted noise
    assert (step.prev_sample - plain).abs().max() > 1e-3
    # Second step on: plain DDIM, as diffusers' own DDIMScheduler computes it (its even 250-step spacing).
    ddim = DDIMScheduler.from_config(config, clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing")
    ddim.set_timesteps(4)
    assert ddim.timesteps.tolist() == STUDENT_TIMESTEPS
    x = step.prev_sample
    with torch.no_grad():
        out = eps_unet(x, torch.full((3,), 749)).sample
    theirs = ddim.step(out, 749, x).prev_sample
    torch.testing.assert_close(
        corrected.step(out, 749, x).prev_sample, theirs, rtol=0, atol=1e-5 * theirs.abs().max().item()
    )


@pytest.mark.parametrize("sampler", ["ddim", "noise_corrected_ddim"])
def test_scheduler_matches_the_training_sampler(sd_schedule, eps_unet, sampler):
    """jobs.sample (scheduler) and backward simulation (pure functions) are the same sampler."""
    scheduler = NoiseCorrectedDDIMScheduler.from_config(
        ddpm_scheduler_config(), noise_correction=sampler == "noise_corrected_ddim"
    )
    scheduler.set_timesteps(timesteps=THREE_STEPS)
    noise = torch.randn((4, 1, 8, 8), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours = student_sample(x0_fn_of(eps_unet, sd_schedule), sd_schedule, noise, THREE_STEPS, sampler=sampler)
        theirs = sample_with_scheduler(lambda x, t: eps_unet(x, t).sample, scheduler, noise)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5 * theirs.abs().max().item())


def test_scheduler_round_trips_through_a_folder(tmp_path):
    scheduler = NoiseCorrectedDDIMScheduler.from_config(ddpm_scheduler_config(), noise_correction=True)
    scheduler.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "scheduler_config.json").read_text())["_class_name"] == "NoiseCorrectedDDIMScheduler"
    loaded = NoiseCorrectedDDIMScheduler.from_pretrained(tmp_path)
    assert loaded.config.noise_correction is True and loaded.config.beta_schedule == "scaled_linear"


def test_zero_terminal_snr_is_refused_with_noise_correction():
    """alpha_T = 0 (what diffusers' rescale_betas_zero_snr makes of the last step): no signal to correct."""
    for noise_correction in (True, False):
        scheduler = NoiseCorrectedDDIMScheduler.from_config(ddpm_scheduler_config(), noise_correction=noise_correction)
        scheduler.schedule.alphas_cumprod[-1] = 0.0
        if noise_correction:
            with pytest.raises(UserError, match="zero terminal SNR"):
                scheduler.set_timesteps(timesteps=THREE_STEPS)
        else:
            scheduler.set_timesteps(timesteps=THREE_STEPS)  # plain DDIM has no such need


@pytest.mark.parametrize("sampler", ["lcm", "ddim", "noise_corrected_ddim"])
def test_backward_distillation_inputs_have_no_graph_to_earlier_steps(sd_schedule, sampler):
    weight = torch.tensor(0.9, requires_grad=True)
    x0_fn = lambda x_t, t: weight * x_t  # noqa: E731  (trainable: a graph would reach `weight`)
    noise = torch.randn(2, 1, 4, 4)
    for k in range(3):
        x = backward_simulate(x0_fn, sd_schedule, noise, THREE_STEPS, k, torch.Generator().manual_seed(0), sampler)
        assert not x.requires_grad and x.grad_fn is None
    # The deterministic samplers are deterministic; only lcm draws fresh noise.
    a = backward_simulate(x0_fn, sd_schedule, noise, THREE_STEPS, 2, torch.Generator().manual_seed(0), sampler)
    b = backward_simulate(x0_fn, sd_schedule, noise, THREE_STEPS, 2, torch.Generator().manual_seed(1), sampler)
    assert torch.equal(a, b) == (sampler != "lcm")
