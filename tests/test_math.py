"""Known-answer tests for the pure maths: schedule, DMD2 losses, the Gaussian teacher, GAN head.

Everything here runs on CPU in a few seconds: tiny UNets, a closed-form Gaussian "teacher", and
diffusers' own schedulers as the reference for the samplers.
"""

import math
from dataclasses import asdict

import pytest
import torch
from diffusers import DDPMScheduler

from orchestrator.config import UNetConfig
from tests.math_helpers import UNET_32, gaussian_x0, one_thread, schedule_for, sd_schedule, spread_timesteps  # noqa: F401  (fixtures)
from workers.diffusion.losses import (
    denoising_loss,
    discriminator_loss,
    dm_gradient,
    dm_loss,
    dm_timestep_range,
    generator_gan_loss,
    sample_timesteps,
    surrogate_loss,
)
from workers.diffusion.schedule import PREDICTION_TYPES, NoiseSchedule, ddpm_scheduler_config
from workers.models.conditioning import ClassLabels
from workers.models.folders import build_unet
from workers.models.gan_head import GanHead, bottleneck, head_for

# --------------------------------------------------------------------------------------------
# 1. Schedule
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_to_x0_and_to_eps_invert_add_noise(prediction_type):
    schedule = schedule_for(prediction_type)
    assert schedule.prediction_type == prediction_type
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn((16, 3, 4, 4), generator=g, dtype=torch.float64)
    eps = torch.randn((16, 3, 4, 4), generator=g, dtype=torch.float64)
    t = spread_timesteps(16)
    x_t = schedule.add_noise(x0, eps, t)
    out = schedule.training_target(x0, eps, t)
    torch.testing.assert_close(schedule.to_x0(out, x_t, t), x0, rtol=0, atol=1e-12)
    torch.testing.assert_close(schedule.to_eps(x0, x_t, t), eps, rtol=0, atol=1e-12)
    # A wrong network output gives a wrong x0: the check can fail.
    assert not torch.allclose(schedule.to_x0(out + 0.1, x_t, t), x0, atol=1e-3)


def test_training_targets_are_the_textbook_ones(sd_schedule):
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn((2, 2, 1, 2, 2), generator=g, dtype=torch.float64)
    t = torch.tensor([0, 999])
    abar = sd_schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    alpha, sigma = sd_schedule.alpha_sigma(t)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(alpha), rtol=0, atol=1e-15)
    torch.testing.assert_close(alpha, abar.sqrt(), rtol=0, atol=0)
    torch.testing.assert_close(
        sd_schedule.add_noise(x0, eps, t), abar.sqrt() * x0 + (1 - abar).sqrt() * eps, rtol=0, atol=1e-15
    )
    assert torch.equal(schedule_for("epsilon").training_target(x0, eps, t), eps)
    assert torch.equal(schedule_for("sample").training_target(x0, eps, t), x0)
    v = schedule_for("v_prediction").training_target(x0, eps, t)
    torch.testing.assert_close(v, abar.sqrt() * eps - (1 - abar).sqrt() * x0, rtol=0, atol=1e-15)


def test_schedule_agrees_with_diffusers_ddpm():
    """add_noise and the v target are diffusers' DDPMScheduler.add_noise / get_velocity (float32 there)."""
    config = ddpm_scheduler_config(prediction_type="v_prediction")
    reference = DDPMScheduler.from_config(config)
    schedule = NoiseSchedule.from_scheduler_config(config)
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn((2, 8, 1, 4, 4), generator=g)
    t = spread_timesteps(8)
    torch.testing.assert_close(schedule.add_noise(x0, eps, t), reference.add_noise(x0, eps, t), rtol=0, atol=1e-6)
    torch.testing.assert_close(
        schedule.training_target(x0, eps, t), reference.get_velocity(x0, eps, t), rtol=0, atol=1e-6
    )


def test_inverse_alpha_at_t999():
    sd = schedule_for()
    linear = NoiseSchedule.from_scheduler_config(
        ddpm_scheduler_config(beta_schedule="linear", beta_start=0.0001, beta_end=0.02)
    )
    t = torch.tensor([999])
    inv_sd = 1 / sd.alpha_sigma(t)[0].item()
    inv_linear = 1 / linear.alpha_sigma(t)[0].item()
    assert inv_sd == pytest.approx(14.65, abs=0.01)
    assert inv_linear == pytest.approx(157.4, abs=0.1)
    # Closed form for the scaled-linear betas (linear in sqrt(beta)), independent of diffusers.
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    assert inv_sd == pytest.approx(1 / torch.cumprod(1 - betas, 0)[-1].sqrt().item(), rel=1e-5)


# --------------------------------------------------------------------------------------------
# 2. DM gradient and loss
# --------------------------------------------------------------------------------------------


def test_dm_gradient_known_answer():
    fake = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 2)
    real = torch.tensor([0.0, 0.0, 5.0, 4.0]).view(1, 1, 2, 2)  # |fake - real| mean = (1 + 2 + 2 + 0) / 4
    critic = torch.tensor([1.0, -1.0, 5.0, 6.0]).view(1, 1, 2, 2)
    expected = (critic - real) / 1.25
    assert torch.equal(dm_gradient(fake, real, critic), expected)


def test_dm_loss_gradient_is_dm_gradient_over_numel():
    g = torch.Generator().manual_seed(3)
    fake = torch.randn((4, 3, 4, 4), generator=g).requires_grad_(True)
    real, critic = torch.randn((2, 4, 3, 4, 4), generator=g)
    grad = dm_gradient(fake, real, critic)
    assert grad.grad_fn is None and grad.dtype == fake.dtype
    loss = dm_loss(fake, grad)
    loss.backward()
    torch.testing.assert_close(fake.grad, grad / fake.numel(), rtol=1e-5, atol=1e-9)
    # The loss value is 0.5 * mean(grad^2) (the stop-gradient target sits `grad` away).
    torch.testing.assert_close(loss, 0.5 * grad.pow(2).mean(), rtol=1e-5, atol=0)


def test_dm_gradient_is_normalised_per_sample():
    g = torch.Generator().manual_seed(4)
    fake, real, critic = torch.randn((3, 4, 3, 4, 4), generator=g, dtype=torch.float64)
    base = dm_gradient(fake, real, critic)
    scaled = fake.clone()
    scaled[1] = real[1] + 10 * (fake[1] - real[1])  # sample 1's weight mean|fake - real| grows 10x
    moved = dm_gradient(scaled, real, critic)
    torch.testing.assert_close(moved[1], base[1] / 10, rtol=1e-12, atol=0)
    assert torch.equal(moved[[0, 2, 3]], base[[0, 2, 3]])
    # The weight is per sample, not over the batch: samples 0, 2, 3 are untouched above.
    weights = (fake - real).abs().mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(base, (critic - real) / weights, rtol=1e-12, atol=0)


def test_dm_gradient_nan_to_num_when_fake_equals_real():
    g = torch.Generator().manual_seed(5)
    fake, critic = torch.randn((2, 3, 1, 4, 4), generator=g)
    real = fake.clone()
    critic[0] = real[0]  # 0 / 0 on sample 0
    grad = dm_gradient(fake, real, critic)
    assert not grad.isnan().any()
    assert torch.equal(grad[0], torch.zeros_like(grad[0]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dm_gradient_and_loss_stay_finite_when_fake_equals_real_but_critic_differs(dtype):
    g = torch.Generator().manual_seed(6)
    fake, critic = torch.randn((2, 3, 1, 4, 4), generator=g, dtype=dtype)
    real = fake.clone()  # weight 0 on every sample, critic != real: x / 0
    x = fake.clone().requires_grad_(True)
    grad = dm_gradient(x, real, critic)
    loss = dm_loss(x, grad)
    loss.backward()
    assert grad.isfinite().all() and loss.isfinite() and x.grad.isfinite().all()


# --------------------------------------------------------------------------------------------
# 3. A closed-form Gaussian teacher and critic
# --------------------------------------------------------------------------------------------


def test_gaussian_posterior_mean_matches_tweedie_and_orthogonality(sd_schedule):
    mu = torch.tensor([0.5, -0.5, 1.0, 0.0], dtype=torch.float64).view(1, 1, 2, 2)
    s = 0.7
    t = torch.tensor([20, 250, 500, 750, 980])
    alpha, sigma = sd_schedule.alpha_sigma(t)
    # Tweedie: E[x0 | x_t] = (x_t + sigma^2 grad log p_t(x_t)) / alpha,
    # with p_t = N(alpha mu, (alpha^2 s^2 + sigma^2) I).
    x_t = torch.randn((5, 1, 2, 2), generator=torch.Generator().manual_seed(7), dtype=torch.float64).requires_grad_(
        True
    )
    std_t = (alpha**2 * s**2 + sigma**2).sqrt()
    log_p = torch.distributions.Normal(alpha * mu, std_t).log_prob(x_t).sum()
    (score,) = torch.autograd.grad(log_p, x_t)
    tweedie = (x_t + sigma**2 * score) / alpha
    torch.testing.assert_close(
        gaussian_x0(sd_schedule, x_t.detach(), t, mu, s), tweedie.detach(), rtol=1e-12, atol=1e-12
    )
    # Monte Carlo: the residual x0 - E[x0|x_t] has mean 0 and is uncorrelated with x_t (the linear
    # posterior mean is then the conditional mean, as the pair is jointly Gaussian).
    g = torch.Generator().manual_seed(8)
    n = 200_000
    tt = torch.full((n,), 500)
    x0 = mu + s * torch.randn((n, 1, 2, 2), generator=g, dtype=torch.float64)
    xt = sd_schedule.add_noise(x0, torch.randn((n, 1, 2, 2), generator=g, dtype=torch.float64), tt)
    residual = x0 - gaussian_x0(sd_schedule, xt, tt, mu, s)
    assert residual.mean(0).abs().max() < 0.01  # std of residual <= s, so 5 sigma is 0.008
    assert (residual * (xt - xt.mean(0))).mean(0).abs().max() < 0.01


def test_dm_descent_direction_points_from_fake_to_real(sd_schedule):
    g = torch.Generator().manual_seed(9)
    mu_real = torch.tensor([0.5, -0.5, 1.0, 0.0]).view(1, 1, 2, 2)
    mu_fake = torch.tensor([-1.0, 0.5, 0.0, 1.5]).view(1, 1, 2, 2)
    s_real, s_fake, batch = 0.5, 0.8, 512
    x0_fake = mu_fake + s_fake * torch.randn((batch, 1, 2, 2), generator=g)
    t = sample_timesteps(batch, 20, 980, g)
    x_t = sd_schedule.add_noise(x0_fake, torch.randn(x0_fake.shape, generator=g), t)
    x0_real = gaussian_x0(sd_schedule, x_t, t, mu_real, s_real)
    x0_critic = gaussian_x0(sd_schedule, x_t, t, mu_fake, s_fake)
    descent = -dm_gradient(x0_fake, x0_real, x0_critic).flatten(1)
    toward = (mu_real - mu_fake).flatten(1).expand_as(descent)
    cosine = torch.nn.functional.cosine_similarity(descent, toward, dim=1)
    assert cosine.mean() > 0.5, cosine.mean()
    assert (cosine > 0).float().mean() > 0.9
    # With the critic equal to the teacher there is nothing to match: the gradient vanishes.
    assert dm_gradient(x0_fake, x0_real, x0_real).abs().max() == 0


def train_toy_generator(schedule: NoiseSchedule, empirical_critic: bool, steps: int, batch: int, lr: float):
    """x0_fake = a + b z trained on dm_loss against the Gaussian teacher N(mu_real, s^2 I), D = 4."""
    g = torch.Generator().manual_seed(10)
    mu_real, s_real = torch.tensor([0.5, -0.5, 1.0, 0.0]).view(1, 1, 2, 2), 0.5
    a = (mu_real + 1.0).requires_grad_(True)  # |a - mu_real| = 2
    b = torch.tensor(1.5, requires_grad=True)
    optimizer = torch.optim.Adam([a, b], lr=lr)
    for _ in range(steps):
        x0_fake = a + b * torch.randn((batch, 1, 2, 2), generator=g)
        t = sample_timesteps(batch, 20, 980, g)
        x_t = schedule.add_noise(x0_fake.detach(), torch.randn(x0_fake.shape, generator=g), t)
        x0_real = gaussian_x0(schedule, x_t, t, mu_real, s_real)
        if empirical_critic:  # the batch's own statistics
            fake = x0_fake.detach().double()
            x0_critic = gaussian_x0(schedule, x_t, t, fake.mean(0, keepdim=True), fake.std(0).mean())
        else:  # the current fake distribution N(a, b^2 I) exactly
            x0_critic = gaussian_x0(schedule, x_t, t, a.detach().double(), b.detach().abs().double())
        loss = dm_loss(x0_fake, dm_gradient(x0_fake, x0_real, x0_critic))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (a.detach() - mu_real).norm().item(), b.detach().abs().item()


def test_toy_generator_matches_gaussian_with_exact_critic(sd_schedule):
    # Observed over seeds 0..4: |a - mu| < 1e-6 and |b - s| < 1e-6 after 300 steps (the exact
    # critic makes the gradient exactly 0 at the optimum); 1e-3 leaves a wide margin.
    distance, std = train_toy_generator(sd_schedule, empirical_critic=False, steps=300, batch=16, lr=0.05)
    assert distance < 1e-3, distance
    assert std == pytest.approx(0.5, abs=1e-3)


def test_toy_generator_matches_gaussian_with_empirical_critic(sd_schedule):
    # Observed over seeds 0..4: |a - mu| <= 0.063 and |b - s| <= 0.042 (batch-statistics noise).
    distance, std = train_toy_generator(sd_schedule, empirical_critic=True, steps=300, batch=64, lr=0.05)
    assert distance < 0.1, distance
    assert std == pytest.approx(0.5, abs=0.1)


# --------------------------------------------------------------------------------------------
# 4. GAN losses and head
# --------------------------------------------------------------------------------------------


def test_gan_losses_known_values():
    zero = torch.zeros(8)
    assert discriminator_loss(zero, zero).item() == pytest.approx(2 * math.log(2), rel=1e-6)
    assert generator_gan_loss(zero).item() == pytest.approx(math.log(2), rel=1e-6)
    real, fake = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 3.0])
    expected = (math.log1p(math.exp(0.5)) + math.log1p(math.exp(3.0))) / 2 + (
        math.log1p(math.exp(-1.0)) + math.log1p(math.exp(2.0))
    ) / 2
    assert discriminator_loss(real, fake).item() == pytest.approx(expected, rel=1e-6)
    assert generator_gan_loss(fake).item() == pytest.approx(
        (math.log1p(math.exp(-0.5)) + math.log1p(math.exp(-3.0))) / 2, rel=1e-6
    )
    # (B, 1) logits are accepted as well as (B,)
    assert discriminator_loss(real.view(2, 1), fake.view(2, 1)).item() == pytest.approx(expected, rel=1e-6)


def test_discriminator_loss_decreases_as_it_separates():
    zero = torch.zeros(4)
    losses = [discriminator_loss(zero + m, zero - m).item() for m in (0.0, 0.5, 1.0, 3.0, 10.0)]
    assert all(a > b for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 1e-3
    # Raising only the real logits, or lowering only the fake ones, each helps.
    assert discriminator_loss(zero + 1, zero) < discriminator_loss(zero, zero)
    assert discriminator_loss(zero, zero - 1) < discriminator_loss(zero, zero)
    # The generator's loss falls as the fake logits rise.
    assert generator_gan_loss(zero + 1) < generator_gan_loss(zero) < generator_gan_loss(zero - 1)


@pytest.mark.parametrize(
    ("config", "feature_shape"), [(UNetConfig(), (64, 2, 2)), (UNET_32, (32, 16, 16))], ids=["8x8", "32x32"]
)
def test_gan_head_on_bottleneck_gives_one_logit_per_sample(config, feature_shape):
    torch.manual_seed(11)
    unet = build_unet(10, **asdict(config)).eval()
    head = head_for(unet)
    g = torch.Generator().manual_seed(12)
    x_t = torch.randn((3, 1, config.sample_size, config.sample_size), generator=g)
    t, labels = torch.tensor([0, 500, 999]), torch.tensor([1, 2, 10])
    features = bottleneck(unet, x_t, t, ClassLabels(10).unet_kwargs(labels))
    assert features.shape == (3, *feature_shape)
    logits = head(features)
    assert logits.shape == (3,) and logits.isfinite().all()
    discriminator_loss(logits[:2], logits[2:]).backward()
    assert all(p.grad is not None for p in head.parameters())


@pytest.mark.parametrize(
    "config",
    [
        UNetConfig(),
        UNET_32,
    ],
    ids=["8x8", "32x32"],
)
def test_gan_head_logits_depend_on_the_input(config):
    torch.manual_seed(13)
    unet = build_unet(10, **asdict(config)).eval()
    head = head_for(unet)
    g = torch.Generator().manual_seed(14)
    x_t = torch.randn((4, 1, config.sample_size, config.sample_size), generator=g).requires_grad_(True)
    logits = head(
        bottleneck(unet, x_t, torch.tensor([10, 400, 700, 999]), {"class_labels": torch.tensor([0, 1, 2, 3])})
    )
    assert (logits.max() - logits.min()).item() > 1e-4, logits
    # The generator's GAN gradient has to reach the image through the encoder and the head.
    (image_grad,) = torch.autograd.grad(generator_gan_loss(logits), x_t)
    assert image_grad.abs().max().item() > 1e-6


@pytest.mark.parametrize("config", [UNetConfig(), UNET_32], ids=["8x8", "32x32"])
@pytest.mark.parametrize("num_classes", [10, 0], ids=["classes", "unconditional"])
def test_bottleneck_is_the_mid_block_output_of_a_full_forward(config, num_classes):
    torch.manual_seed(15)
    unet = build_unet(num_classes, **asdict(config)).eval()
    captured = []
    handle = unet.mid_block.register_forward_hook(lambda module, args, output: captured.append(output))
    g = torch.Generator().manual_seed(16)
    x_t = torch.randn((3, 1, config.sample_size, config.sample_size), generator=g)
    t = torch.tensor([3, 480, 999])
    labels = torch.tensor([0, 7, 10]) if num_classes else None
    try:
        with torch.no_grad():
            unet(x_t, t, class_labels=labels)
            features = bottleneck(unet, x_t, t, ClassLabels(num_classes).unet_kwargs(labels))
    finally:
        handle.remove()
    assert len(captured) == 2  # the full forward and bottleneck() both ran the mid block
    assert torch.equal(features, captured[0])


def test_gan_head_reduces_to_one_by_one():
    head = GanHead(channels=64, size=16)
    convs = [m for m in head.layers if isinstance(m, torch.nn.Conv2d)]
    # 16 -> 8 -> 4 by stride-2 convs, then 4x4 stride 4 to 1x1, then the 1x1 logit conv.
    assert [(c.kernel_size, c.stride) for c in convs] == [
        ((4, 4), (2, 2)),
        ((4, 4), (2, 2)),
        ((4, 4), (4, 4)),
        ((1, 1), (1, 1)),
    ]
    assert head(torch.randn(2, 64, 16, 16)).shape == (2,)


# --------------------------------------------------------------------------------------------
# Small helpers of the losses module
# --------------------------------------------------------------------------------------------


def test_sample_timesteps_is_inclusive_and_seeded():
    t = sample_timesteps(20_000, 20, 980, torch.Generator().manual_seed(35))
    assert t.dtype == torch.int64 and t.shape == (20_000,)
    assert t.min().item() == 20 and t.max().item() == 980
    assert torch.equal(t, sample_timesteps(20_000, 20, 980, torch.Generator().manual_seed(35)))


def test_dm_timestep_range_caps_later_steps_at_their_input_timestep():
    steps = [999, 749, 499, 249]
    assert [dm_timestep_range(20, 980, steps, k, below_input=False) for k in range(4)] == [(20, 980)] * 4
    # The first step starts from pure noise: the whole range; later ones: up to their own t_k.
    assert [dm_timestep_range(20, 980, steps, k, below_input=True) for k in range(4)] == [
        (20, 980),
        (20, 749),
        (20, 499),
        (20, 249),
    ]
    assert dm_timestep_range(20, 980, [999, 10], 1, below_input=True) == (20, 20)  # never an empty range


def test_student_steps_are_drawn_uniformly_or_by_their_weights():
    import numpy as np

    from orchestrator.cycle import draw_student_step

    # Without weights, DMD2's uniform draw exactly as before the option existed.
    assert [draw_student_step(np.random.default_rng(s), 4) for s in range(20)] == [
        int(np.random.default_rng(s).integers(4)) for s in range(20)
    ]
    rng = np.random.default_rng(1)
    counts = np.bincount([draw_student_step(rng, 4, [1, 0, 1, 2]) for _ in range(4000)], minlength=4)
    assert counts[1] == 0
    assert np.allclose(counts / 4000, [0.25, 0, 0.25, 0.5], atol=0.03)


def test_surrogate_and_denoising_losses(sd_schedule):
    g = torch.Generator().manual_seed(36)
    x = torch.randn((2, 1, 4, 4), generator=g).requires_grad_(True)
    gradient = torch.randn((2, 1, 4, 4), generator=g)
    surrogate_loss(x, gradient).backward()
    assert torch.equal(x.grad, gradient)
    x0, eps = torch.randn((2, 2, 1, 4, 4), generator=g)
    t = torch.tensor([5, 995])
    for prediction_type in PREDICTION_TYPES:
        schedule = schedule_for(prediction_type)
        target = schedule.training_target(x0, eps, t)
        assert denoising_loss(target, schedule, x0, eps, t).item() == pytest.approx(0.0, abs=1e-12)
        assert denoising_loss(target + 0.5, schedule, x0, eps, t).item() == pytest.approx(0.25, rel=1e-5)
