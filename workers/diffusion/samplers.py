"""Samplers: pure functions of an x0 predictor, and a loop over a diffusers scheduler.

`X0Fn` is any callable (x_t (B,C,H,W), t (B,) int64) -> x0 estimate (B,C,H,W): a teacher,
a student, a toy Gaussian. The pure functions are what training uses (backward simulation);
`sample_with_scheduler` is what inference uses on a saved folder, through diffusers' own
`set_timesteps` / `step` contract (DDIM for teachers, LCM with explicit timesteps for students).
Tests check that the two agree.
"""

from collections.abc import Callable

import torch

from workers.diffusion.schedule import NoiseSchedule

X0Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def timestep_batch(t: int, like: torch.Tensor) -> torch.Tensor:
    """The integer timestep t repeated for every sample of `like`: (B,) int64."""
    return torch.full((like.shape[0],), int(t), dtype=torch.long, device=like.device)


def renoise(
    schedule: NoiseSchedule, x0: torch.Tensor, t_next: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The student's move to its next timestep: x0 forward-noised with fresh noise (DMD2, LCM)."""
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    return schedule.add_noise(x0, eps, timestep_batch(t_next, x0))


def student_move(
    sampler: str,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    x: torch.Tensor,
    t: int,
    t_next: int,
    first: bool,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """From x at t, with the x0 estimate there, to the next student timestep.

    lcm: fresh noise. ddim: the noise implied by (x0, x), deterministic. noise_corrected_ddim: DDIM,
    except that the first step reuses the initial noise x_T itself (Imagine Flash's noise correction:
    at t = T the network's noise estimate is its worst, while x_T is the exact one).
    """
    if sampler == "lcm":
        return renoise(schedule, x0, t_next, generator)
    eps = x if first and sampler == "noise_corrected_ddim" else schedule.to_eps(x0, x, timestep_batch(t, x))
    return schedule.add_noise(x0, eps, timestep_batch(t_next, x0))


@torch.no_grad()
def backward_simulate(
    x0_fn: X0Fn,
    schedule: NoiseSchedule,
    noise: torch.Tensor,
    timesteps: list[int],
    k: int,
    generator: torch.Generator | None = None,
    sampler: str = "lcm",
) -> torch.Tensor:
    """The student's own input at timesteps[k]: k steps of its sampler from `noise`, with no graph.

    k = 0 returns `noise` itself (the input at the first timestep). DMD2's backward simulation and
    Imagine Flash's backward distillation: training inputs come from the inference path.
    """
    x = noise
    for i in range(k):
        x0 = x0_fn(x, timestep_batch(timesteps[i], x))
        x = student_move(sampler, schedule, x0, x, timesteps[i], timesteps[i + 1], i == 0, generator)
    return x.detach()


@torch.no_grad()
def sample_with_scheduler(
    output_fn: Callable, scheduler, noise: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Run a diffusers scheduler whose timesteps are already set; `output_fn(x_t, t)` is the network output."""
    x = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        out = output_fn(scheduler.scale_model_input(x, t), timestep_batch(int(t), x))
        x = scheduler.step(out, t, x, generator=generator).prev_sample
    return x
