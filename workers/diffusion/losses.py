"""DMD2's losses as pure tensor functions (docs/methods.md); no Ray, no DeepSpeed.

Shapes: images (B, C, H, W); logits (B,) or (B, 1); timesteps (B,) int64.
"""

import torch
import torch.nn.functional as F

from workers.diffusion.schedule import NoiseSchedule


def dm_gradient(x0_fake: torch.Tensor, x0_real: torch.Tensor, x0_critic: torch.Tensor) -> torch.Tensor:
    """The distribution-matching direction, per-sample normalised (DMD2 eq. 3's weighting).

    (x0_critic - x0_real) / mean_{C,H,W} |x0_fake - x0_real|: descending it moves x0_fake toward
    the teacher's (real) score and away from the critic's (fake) one. Computed in float64.
    """
    fake, real, critic = x0_fake.detach().double(), x0_real.double(), x0_critic.double()
    weight = (fake - real).abs().mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    # A sample whose fake equals the teacher's x0 has zero weight: it gets no push, not an inf.
    return torch.nan_to_num((critic - real) / weight, nan=0.0, posinf=0.0, neginf=0.0).to(x0_fake.dtype)


def dm_loss(x0_fake: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """0.5 * mean((x0_fake - stopgrad(x0_fake - gradient))^2): its gradient wrt x0_fake is gradient / numel."""
    target = (x0_fake - gradient).detach()
    return 0.5 * F.mse_loss(x0_fake.float(), target.float())


def denoising_loss(
    output: torch.Tensor,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    eps: torch.Tensor,
    t: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """MSE to the prediction type's target: the critic's loss (unweighted, as DMD2's) and the teacher's
    (optionally weighted per sample, `weights` (B,))."""
    target = schedule.training_target(x0, eps, t).float()
    if weights is None:
        return F.mse_loss(output.float(), target)
    per_sample = (output.float() - target).pow(2).mean(dim=(1, 2, 3))  # (B,)
    return (weights.float() * per_sample).mean()


def min_snr_weights(schedule: NoiseSchedule, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023), (B,): the x0-error weight min(SNR, gamma) expressed for
    the schedule's prediction type, so no noise level dominates training (it converges several times faster)."""
    alpha, sigma = schedule.alpha_sigma(t)
    snr = (alpha / sigma).pow(2).flatten()  # (B,)
    clipped = snr.clamp(max=gamma)
    if schedule.prediction_type == "epsilon":
        return clipped / snr
    if schedule.prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped


def discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN, discriminator side: softplus(l_fake) + softplus(-l_real)."""
    return F.softplus(logits_fake.float()).mean() + F.softplus(-logits_real.float()).mean()


def generator_gan_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN, generator side: softplus(-l_fake)."""
    return F.softplus(-logits_fake.float()).mean()


def surrogate_loss(x: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """A scalar whose gradient wrt x is `gradient` (computed elsewhere, e.g. by another role)."""
    return (x.float() * gradient.detach().float()).sum()


def dm_timestep_range(low: int, high: int, student_timesteps: list[int], k: int, below_input: bool) -> tuple[int, int]:
    """The DM loss's timestep range [low, high] for the student's step k (inclusive).

    below_input: every step after the first draws t no higher than its own input's timestep t_k.
    Its input already fixes what lies above that noise level; matching there too lets a later step
    redraw the structure, and each redraw seeks modes again (measured: recall 0.85 after the first
    of four steps, 0.56 after the fourth). The first step starts from pure noise and matches at every t.
    """
    if not below_input or k == 0:
        return low, high
    return low, max(low, min(high, int(student_timesteps[k])))


def sample_timesteps(batch: int, low: int, high: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """t ~ UniformInt[low, high] inclusive, (batch,) int64."""
    return torch.randint(low, high + 1, (batch,), generator=generator)
