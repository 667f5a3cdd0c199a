"""Imagine Flash's shifted reconstruction loss (docs/methods.md) as pure tensor functions; no Ray, no DeepSpeed.

The student's x0 estimate is re-noised to a shifted teacher timestep gamma(t); the teacher denoises
it for k DDIM steps, and its x0 is the target the student's x0 regresses onto (no gradient through
it). High t: the teacher redraws structure; low t: it only adds detail.
Shapes: images (B, C, H, W), timesteps (B,) int64.
"""

import torch
import torch.nn.functional as F

from workers.diffusion.samplers import X0Fn
from workers.diffusion.schedule import NoiseSchedule


def shifted_timesteps(
    t: torch.Tensor,
    scale: float,
    shift: float,
    jitter: int,
    num_train_timesteps: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """gamma(t) = clip(round(scale * t + shift) + U{-jitter..jitter}, 0, T-1), (B,) int64; increasing in t."""
    gamma = (scale * t.double() + shift).round().long()
    if jitter:
        gamma = gamma + torch.randint(-jitter, jitter + 1, t.shape, generator=generator)
    return gamma.clamp(0, num_train_timesteps - 1)


def teacher_steps(gamma: torch.Tensor, k: int) -> list[torch.Tensor]:
    """k DDIM timesteps per sample, evenly from gamma(t) down toward 0: [gamma, gamma (k-1)/k, ..., gamma/k]."""
    return [(gamma.double() * (k - i) / k).round().long() for i in range(k)]


@torch.no_grad()
def srl_target(
    teacher_x0: X0Fn,
    schedule: NoiseSchedule,
    x0_student: torch.Tensor,
    gamma: torch.Tensor,
    k: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The teacher's x0 after re-noising x0_student to gamma and k DDIM steps; carries no graph."""
    eps = torch.randn(x0_student.shape, generator=generator, dtype=x0_student.dtype)
    steps = teacher_steps(gamma, k)
    x = schedule.add_noise(x0_student.detach(), eps, steps[0])
    for i, t in enumerate(steps):
        x0 = teacher_x0(x, t)
        if i + 1 < k:
            x = schedule.add_noise(x0, schedule.to_eps(x0, x, t), steps[i + 1])
    return x0.detach()


def srl_loss(x0_student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean((x0_student - stopgrad(target))^2)."""
    return F.mse_loss(x0_student.float(), target.detach().float())
