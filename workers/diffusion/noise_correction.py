"""Imagine Flash's noise correction as a diffusers scheduler, saved with the students that use it.

DDIM (eta = 0) at a student's explicit timesteps; with `noise_correction`, its first step uses the
initial noise x_T itself in the direction term instead of the network's noise estimate:
    x_next = alpha_next * x0_hat(x_T, T) + sigma_next * x_T
Later steps, and every step without `noise_correction`, are plain DDIM; the last step returns x0.
It is the same move as `workers.sampling.student_move`, which training uses; tests check they agree.

A pipeline built with `DiffusionPipeline.from_pretrained` looks scheduler classes up in diffusers,
so outside this project pass it explicitly:
    NoiseCorrectedDDIMScheduler.from_pretrained(student_dir, subfolder="scheduler")
"""

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from workers.diffusion.samplers import student_move, timestep_batch
from workers.diffusion.schedule import NoiseSchedule
from workers.errors import UserError

MIN_ALPHA = 1e-3
"""Below this alpha at the first timestep there is no signal for x0_hat(x_T) to carry (zero terminal SNR)."""


class NoiseCorrectedDDIMScheduler(SchedulerMixin, ConfigMixin):
    config_name = "scheduler_config.json"
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        prediction_type: str = "epsilon",
        noise_correction: bool = True,
    ):
        self.schedule = NoiseSchedule.from_scheduler_config(
            {
                "num_train_timesteps": num_train_timesteps,
                "beta_start": beta_start,
                "beta_end": beta_end,
                "beta_schedule": beta_schedule,
                "prediction_type": prediction_type,
            }
        )
        self.init_noise_sigma = 1.0
        self.timesteps = torch.tensor([num_train_timesteps - 1], dtype=torch.long)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """Explicit `timesteps` (high to low), or `num_inference_steps` evenly spaced from T-1 (trailing)."""
        T = self.config.num_train_timesteps
        if timesteps is None:
            if not num_inference_steps:
                raise ValueError("set_timesteps needs timesteps=[...] (high to low) or num_inference_steps")
            timesteps = [round(T - 1 - i * T / num_inference_steps) for i in range(num_inference_steps)]
        if any(a <= b for a, b in zip(timesteps, timesteps[1:])) or not 0 <= min(timesteps) <= max(timesteps) < T:
            raise ValueError(f"timesteps {list(timesteps)} must be strictly decreasing within 0 .. {T - 1}")
        alpha = float(self.schedule.alphas_cumprod[timesteps[0]].sqrt())
        if self.config.noise_correction and alpha < MIN_ALPHA:
            raise UserError(
                f"noise correction needs signal at the first timestep, and this schedule has alpha={alpha:.2g} at "
                f"t={timesteps[0]} "
                "(zero terminal SNR); set noise_correction=False or start at a lower timestep"
            )
        self.timesteps = torch.tensor(list(timesteps), dtype=torch.long, device=device)
        self.num_inference_steps = len(timesteps)

    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        return sample

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator=None,
        return_dict: bool = True,
    ):
        """One move from `timestep` to the next set timestep (x0 itself after the last)."""
        steps = self.timesteps.tolist()
        i = steps.index(int(timestep))
        x0 = self.schedule.to_x0(model_output, sample, timestep_batch(steps[i], sample))
        if i + 1 == len(steps):
            prev = x0
        else:
            sampler = "noise_corrected_ddim" if self.config.noise_correction else "ddim"
            prev = student_move(sampler, self.schedule, x0, sample, steps[i], steps[i + 1], first=i == 0)
        if not return_dict:
            return (prev, x0)
        return DDIMSchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    def __len__(self) -> int:
        return self.config.num_train_timesteps
