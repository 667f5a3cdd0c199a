"""Known-answer tests for the pure maths: schedule, DMD2 losses, GAN head, samplers, model folders.

Everything here runs on CPU in a few seconds: tiny UNets, a closed-form Gaussian "teacher", and
diffusers' own schedulers as the reference for the samplers.
"""

import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, LCMScheduler

from workers.errors import ModelFolderError
from workers.gan_head import GanHead, bottleneck, head_for
from workers.losses import (
    denoising_loss,
    discriminator_loss,
    dm_gradient,
    dm_loss,
    generator_gan_loss,
    sample_timesteps,
    surrogate_loss,
)
from workers.models import (
    MANIFEST,
    WEIGHTS,
    Denoiser,
    ModelManifest,
    UNetConfig,
    build_unet,
    load_model_folder,
    save_model_folder,
)
from workers.sampling import backward_simulate, ddim_sample, renoise, sample_with_scheduler, student_sample, timestep_batch
from workers.schedule import PREDICTION_TYPES, NoiseSchedule, ScheduleConfig, guided

STUDENT_TIMESTEPS = [999, 749, 499, 249]
UNET_32 = UNetConfig(sample_size=32, block_out_channels=(16, 32), norm_num_groups=8)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors gain nothing from intra-op threads; on a busy 2-core machine two OpenMP threads
    spin against each other (a tiny UNet forward measured 1 s instead of 16 ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def schedule_for(prediction_type: str = "epsilon", **kwargs) -> NoiseSchedule:
    return NoiseSchedule.from_scheduler_config(ScheduleConfig(prediction_type=prediction_type, **kwargs).scheduler_config())


@pytest.fixture(scope="module")
def sd_schedule() -> NoiseSchedule:
    return schedule_for()


def spread_timesteps(batch: int) -> torch.Tensor:
    """0, ..., 999 spread over the batch, both ends included."""
    return torch.linspace(0, 999, batch).round().long()


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
    torch.testing.assert_close(sd_schedule.add_noise(x0, eps, t), abar.sqrt() * x0 + (1 - abar).sqrt() * eps, rtol=0, atol=1e-15)
    assert torch.equal(schedule_for("epsilon").training_target(x0, eps, t), eps)
    assert torch.equal(schedule_for("sample").training_target(x0, eps, t), x0)
    v = schedule_for("v_prediction").training_target(x0, eps, t)
    torch.testing.assert_close(v, abar.sqrt() * eps - (1 - abar).sqrt() * x0, rtol=0, atol=1e-15)


def test_schedule_agrees_with_diffusers_ddpm():
    """add_noise and the v target are diffusers' DDPMScheduler.add_noise / get_velocity (float32 there)."""
    config = ScheduleConfig(prediction_type="v_prediction").scheduler_config()
    reference = DDPMScheduler.from_config(config)
    schedule = NoiseSchedule.from_scheduler_config(config)
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn((2, 8, 1, 4, 4), generator=g)
    t = spread_timesteps(8)
    torch.testing.assert_close(schedule.add_noise(x0, eps, t), reference.add_noise(x0, eps, t), rtol=0, atol=1e-6)
    torch.testing.assert_close(schedule.training_target(x0, eps, t), reference.get_velocity(x0, eps, t), rtol=0, atol=1e-6)


def test_inverse_alpha_at_t999():
    sd = schedule_for()
    linear = NoiseSchedule.from_scheduler_config(ScheduleConfig(beta_schedule="linear", beta_start=0.0001, beta_end=0.02).scheduler_config())
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


def gaussian_x0(schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, mu, s) -> torch.Tensor:
    """E[x0 | x_t] for x0 ~ N(mu, s^2 I): mu + alpha s^2 / (alpha^2 s^2 + sigma^2) (x_t - alpha mu), in float64."""
    alpha, sigma = schedule.alpha_sigma(t)
    mu = torch.as_tensor(mu, dtype=torch.float64)
    s = torch.as_tensor(s, dtype=torch.float64)
    gain = alpha * s**2 / (alpha**2 * s**2 + sigma**2)
    return (mu + gain * (x_t.double() - alpha * mu)).to(x_t.dtype)


def test_gaussian_posterior_mean_matches_tweedie_and_orthogonality(sd_schedule):
    mu = torch.tensor([0.5, -0.5, 1.0, 0.0], dtype=torch.float64).view(1, 1, 2, 2)
    s = 0.7
    t = torch.tensor([20, 250, 500, 750, 980])
    alpha, sigma = sd_schedule.alpha_sigma(t)
    # Tweedie: E[x0 | x_t] = (x_t + sigma^2 grad log p_t(x_t)) / alpha, with p_t = N(alpha mu, (alpha^2 s^2 + sigma^2) I).
    x_t = torch.randn((5, 1, 2, 2), generator=torch.Generator().manual_seed(7), dtype=torch.float64).requires_grad_(True)
    std_t = (alpha**2 * s**2 + sigma**2).sqrt()
    log_p = torch.distributions.Normal(alpha * mu, std_t).log_prob(x_t).sum()
    (score,) = torch.autograd.grad(log_p, x_t)
    tweedie = (x_t + sigma**2 * score) / alpha
    torch.testing.assert_close(gaussian_x0(sd_schedule, x_t.detach(), t, mu, s), tweedie.detach(), rtol=1e-12, atol=1e-12)
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
    expected = (math.log1p(math.exp(0.5)) + math.log1p(math.exp(3.0))) / 2 + (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(2.0))) / 2
    assert discriminator_loss(real, fake).item() == pytest.approx(expected, rel=1e-6)
    assert generator_gan_loss(fake).item() == pytest.approx((math.log1p(math.exp(-0.5)) + math.log1p(math.exp(-3.0))) / 2, rel=1e-6)
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


@pytest.mark.parametrize(("config", "feature_shape"), [(UNetConfig(), (64, 2, 2)), (UNET_32, (32, 16, 16))], ids=["8x8", "32x32"])
def test_gan_head_on_bottleneck_gives_one_logit_per_sample(config, feature_shape):
    torch.manual_seed(11)
    unet = build_unet(config, num_classes=10).eval()
    head = head_for(unet)
    g = torch.Generator().manual_seed(12)
    x_t = torch.randn((3, 1, config.sample_size, config.sample_size), generator=g)
    t, labels = torch.tensor([0, 500, 999]), torch.tensor([1, 2, 10])
    features = bottleneck(unet, x_t, t, labels)
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
    unet = build_unet(config, num_classes=10).eval()
    head = head_for(unet)
    g = torch.Generator().manual_seed(14)
    x_t = torch.randn((4, 1, config.sample_size, config.sample_size), generator=g).requires_grad_(True)
    logits = head(bottleneck(unet, x_t, torch.tensor([10, 400, 700, 999]), torch.tensor([0, 1, 2, 3])))
    assert (logits.max() - logits.min()).item() > 1e-4, logits
    # The generator's GAN gradient has to reach the image through the encoder and the head.
    (image_grad,) = torch.autograd.grad(generator_gan_loss(logits), x_t)
    assert image_grad.abs().max().item() > 1e-6


@pytest.mark.parametrize("config", [UNetConfig(), UNET_32], ids=["8x8", "32x32"])
@pytest.mark.parametrize("num_classes", [10, 0], ids=["classes", "unconditional"])
def test_bottleneck_is_the_mid_block_output_of_a_full_forward(config, num_classes):
    torch.manual_seed(15)
    unet = build_unet(config, num_classes=num_classes).eval()
    captured = []
    handle = unet.mid_block.register_forward_hook(lambda module, args, output: captured.append(output))
    g = torch.Generator().manual_seed(16)
    x_t = torch.randn((3, 1, config.sample_size, config.sample_size), generator=g)
    t = torch.tensor([3, 480, 999])
    labels = torch.tensor([0, 7, 10]) if num_classes else None
    try:
        with torch.no_grad():
            unet(x_t, t, class_labels=labels)
            features = bottleneck(unet, x_t, t, labels)
    finally:
        handle.remove()
    assert len(captured) == 2  # the full forward and bottleneck() both ran the mid block
    assert torch.equal(features, captured[0])


def test_gan_head_reduces_to_one_by_one():
    head = GanHead(channels=64, size=16)
    convs = [m for m in head.layers if isinstance(m, torch.nn.Conv2d)]
    # 16 -> 8 -> 4 by stride-2 convs, then 4x4 stride 4 to 1x1, then the 1x1 logit conv.
    assert [(c.kernel_size, c.stride) for c in convs] == [((4, 4), (2, 2)), ((4, 4), (2, 2)), ((4, 4), (4, 4)), ((1, 1), (1, 1))]
    assert head(torch.randn(2, 64, 16, 16)).shape == (2,)


# --------------------------------------------------------------------------------------------
# 5. Samplers
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eps_unet():
    """A fixed random epsilon network on 8x8 single-channel images (no classes)."""
    torch.manual_seed(17)
    return build_unet(UNetConfig(), num_classes=0).eval()


def eps_fn_of(unet):
    def eps_fn(x_t, t):
        with torch.no_grad():
            return unet(x_t, t).sample

    return eps_fn


def test_backward_simulate_has_no_graph_even_with_trainable_x0_fn(sd_schedule):
    torch.manual_seed(18)
    unet = build_unet(UNetConfig(), num_classes=0)  # train mode, parameters require grad
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
    run = lambda k, seed: backward_simulate(x0_fn, sd_schedule, noise, STUDENT_TIMESTEPS, k, torch.Generator().manual_seed(seed))
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
    assert torch.equal(renoise(sd_schedule, x0, 499, g1), sd_schedule.add_noise(x0, torch.randn(x0.shape, generator=g2), timestep_batch(499, x0)))


def test_student_sample_matches_diffusers_lcm_scheduler(sd_schedule, eps_unet):
    """Our few-step student loop is diffusers' LCMScheduler with explicit timesteps.

    LCM's boundary condition: c_skip = 0.25 / ((10 t)^2 + 0.25) <= 4.1e-8 and 1 - c_out <= 2.1e-8 at
    t >= 249, below float32's resolution (6e-8 relative), so LCM's `denoised` is the x0 estimate.
    Its fresh noise is one randn(shape, generator) per non-final step, the same draws in the same
    order as `renoise`: both generators must end in the same state. Tolerance: float32 against our
    float64 conversions, amplified by 1/alpha_999 = 14.6 at the first step; observed max abs
    difference 7.6e-6 on outputs of magnitude ~50 (1.5e-7 relative); we allow 1e-5 relative.
    """
    config = ScheduleConfig().scheduler_config()
    scheduler = LCMScheduler.from_config(config)
    assert not scheduler.config.clip_sample  # LCM's own default: DDPM's clip_sample is a "default value" not carried over
    scheduler.set_timesteps(timesteps=STUDENT_TIMESTEPS)
    assert scheduler.timesteps.tolist() == STUDENT_TIMESTEPS
    c_skip, c_out = scheduler.get_scalings_for_boundary_condition_discrete(249)
    assert c_skip < 5e-8 and abs(1 - c_out) < 5e-8

    eps_fn = eps_fn_of(eps_unet)
    noise = torch.randn((4, 1, 8, 8), generator=torch.Generator().manual_seed(25))
    ours_g, theirs_g = torch.Generator().manual_seed(26), torch.Generator().manual_seed(26)
    ours = student_sample(lambda x, t: sd_schedule.to_x0(eps_fn(x, t), x, t), sd_schedule, noise, STUDENT_TIMESTEPS, ours_g)
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
    config = ScheduleConfig().scheduler_config()
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
    errors = [(ddim_sample(x0_fn, sd_schedule, noise, list(range(999, -1, -stride))) - flow).abs().max().item() for stride in (1, 5, 50)]
    assert errors[0] < 0.02 and errors[0] < errors[1] < errors[2], errors


# --------------------------------------------------------------------------------------------
# 6. Model folders and the Denoiser
# --------------------------------------------------------------------------------------------


@pytest.fixture()
def saved_folder(tmp_path):
    torch.manual_seed(31)
    unet = build_unet(UNetConfig(), num_classes=10)
    manifest = ModelManifest(kind="student", num_classes=10, guidance_scale=1.0, timesteps=STUDENT_TIMESTEPS, method="dmd2")
    path = save_model_folder(tmp_path / "model", unet, ScheduleConfig().scheduler_config(), manifest)
    return path, unet, manifest


def test_model_folder_round_trips_exactly(saved_folder):
    path, unet, manifest = saved_folder
    folder = load_model_folder(path)
    assert folder.manifest == manifest
    original, loaded = unet.state_dict(), folder.unet.state_dict()
    assert original.keys() == loaded.keys()
    assert all(torch.equal(original[name], loaded[name]) for name in original)
    assert folder.scheduler_config == ScheduleConfig().scheduler_config()
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
    unet = build_unet(UNetConfig(), num_classes=10).double().eval()
    schedule = schedule_for()
    denoiser = Denoiser(unet, schedule, num_classes=10)
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
    unet = build_unet(UNetConfig(), num_classes=0).eval()
    denoiser = Denoiser(unet, schedule_for(), num_classes=0)
    x_t, t = torch.randn(2, 1, 8, 8), torch.tensor([100, 800])
    with torch.no_grad():
        assert torch.equal(denoiser.output(x_t, t, None, guidance_scale=5.0), unet(x_t, t).sample)


# --------------------------------------------------------------------------------------------
# Small helpers of the losses module
# --------------------------------------------------------------------------------------------


def test_sample_timesteps_is_inclusive_and_seeded():
    t = sample_timesteps(20_000, 20, 980, torch.Generator().manual_seed(35))
    assert t.dtype == torch.int64 and t.shape == (20_000,)
    assert t.min().item() == 20 and t.max().item() == 980
    assert torch.equal(t, sample_timesteps(20_000, 20, 980, torch.Generator().manual_seed(35)))


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
