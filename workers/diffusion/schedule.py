"""The noise schedule as pure tensor functions: forward noising and prediction-type conversions.

Notation (docs/methods.md): abar[t] = alphas_cumprod, alpha_t = sqrt(abar[t]), sigma_t = sqrt(1 - abar[t]),
x_t = alpha_t * x0 + sigma_t * eps. Conversions run in float64: at t = 999, 1/alpha_t is about 14.6
on Stable Diffusion's schedule and 157 on diffusers' default linear one, so float32 round-off in
x_t is amplified that much. No Ray, no DeepSpeed here.
"""

from dataclasses import dataclass

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@dataclass(frozen=True)
class NoiseSchedule:
    alphas_cumprod: torch.Tensor  # (T,) float64
    prediction_type: str = "epsilon"

    @classmethod
    def from_scheduler_config(cls, config: dict) -> "NoiseSchedule":
        """Build from any diffusers scheduler config (DDPM, DDIM, LCM, ...): the betas are diffusers'."""
        import inspect

        from diffusers import DDPMScheduler

        known = inspect.signature(DDPMScheduler.__init__).parameters  # a student's scheduler adds its own keys
        scheduler = DDPMScheduler.from_config({k: v for k, v in dict(config).items() if k in known})
        return cls(scheduler.alphas_cumprod.to(torch.float64), scheduler.config.prediction_type)

    @property
    def num_train_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha_t, sigma_t as float64 (B, 1, 1, 1) for integer timesteps t (B,)."""
        abar = self.alphas_cumprod.to(t.device)[t.long()].view(-1, 1, 1, 1)
        return abar.sqrt(), (1.0 - abar).sqrt()

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = alpha_t x0 + sigma_t eps, in x0's dtype."""
        alpha, sigma = self.alpha_sigma(t)
        return (alpha * x0.double() + sigma * eps.double()).to(x0.dtype)

    def to_x0(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The x0 estimate implied by a network output of this schedule's prediction type."""
        alpha, sigma = self.alpha_sigma(t)
        out, x = model_output.double(), x_t.double()
        if self.prediction_type == "epsilon":
            x0 = (x - sigma * out) / alpha
        elif self.prediction_type == "v_prediction":
            x0 = alpha * x - sigma * out
        else:
            x0 = out
        return x0.to(model_output.dtype)

    def to_eps(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The noise implied by an x0 estimate at (x_t, t)."""
        alpha, sigma = self.alpha_sigma(t)
        return ((x_t.double() - alpha * x0.double()) / sigma).to(x0.dtype)

    def training_target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What a network of this prediction type should output at x_t = add_noise(x0, eps, t)."""
        if self.prediction_type == "epsilon":
            return eps
        if self.prediction_type == "v_prediction":
            alpha, sigma = self.alpha_sigma(t)
            return (alpha * eps.double() - sigma * x0.double()).to(x0.dtype)
        return x0


def guided(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + scale * (cond - uncond)."""
    return uncond + scale * (cond - uncond)


def ddpm_scheduler_config(
    beta_schedule: str = "scaled_linear",
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    num_train_timesteps: int = 1000,
    prediction_type: str = "epsilon",
) -> dict:
    """A full diffusers DDPMScheduler config (what a teacher folder saves); the defaults are Stable Diffusion's."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=beta_schedule,
        beta_start=beta_start,
        beta_end=beta_end,
        prediction_type=prediction_type,
    )
    return {"_class_name": "DDPMScheduler", **dict(scheduler.config)}
