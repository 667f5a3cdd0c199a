"""Shared by the known-answer tests: schedules, the closed-form Gaussian teacher, a one-thread fixture."""

import pytest
import torch

from orchestrator.config import UNetConfig
from workers.diffusion.samplers import X0Fn, backward_simulate, timestep_batch
from workers.diffusion.schedule import NoiseSchedule, ddpm_scheduler_config

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
    return NoiseSchedule.from_scheduler_config(ddpm_scheduler_config(prediction_type=prediction_type, **kwargs))


@pytest.fixture(scope="module")
def sd_schedule() -> NoiseSchedule:
    return schedule_for()


def spread_timesteps(batch: int) -> torch.Tensor:
    """0, ..., 999 spread over the batch, both ends included."""
    return torch.linspace(0, 999, batch).round().long()


def gaussian_x0(schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, mu, s) -> torch.Tensor:
    """E[x0 | x_t] for x0 ~ N(mu, s^2 I): mu + alpha s^2 / (alpha^2 s^2 + sigma^2) (x_t - alpha mu), in float64."""
    alpha, sigma = schedule.alpha_sigma(t)
    mu = torch.as_tensor(mu, dtype=torch.float64)
    s = torch.as_tensor(s, dtype=torch.float64)
    gain = alpha * s**2 / (alpha**2 * s**2 + sigma**2)
    return (mu + gain * (x_t.double() - alpha * mu)).to(x_t.dtype)


# Reference samplers: diffusers' own schedulers must agree with these (tests/test_sampling.py).


def ddim_sample(x0_fn: X0Fn, schedule: NoiseSchedule, noise: torch.Tensor, timesteps: list[int]) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from pure noise through `timesteps` (high to low); returns x0."""
    x = noise
    for i, t in enumerate(timesteps):
        tt = timestep_batch(t, x)
        x0 = x0_fn(x, tt)
        if i == len(timesteps) - 1:
            return x0
        eps = schedule.to_eps(x0, x, tt)
        x = schedule.add_noise(x0, eps, timestep_batch(timesteps[i + 1], x))
    return x


def student_sample(
    x0_fn: X0Fn,
    schedule: NoiseSchedule,
    noise: torch.Tensor,
    timesteps: list[int],
    generator: torch.Generator | None = None,
    sampler: str = "lcm",
) -> torch.Tensor:
    """The few-step student sampler: x0 at each timestep, moved to the next; returns the last x0."""
    x = backward_simulate(x0_fn, schedule, noise, timesteps, len(timesteps) - 1, generator, sampler)
    return x0_fn(x, timestep_batch(timesteps[-1], x))
