"""The critic role: the fake score (a trainable copy of the teacher) plus the GAN head on its bottleneck."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from workers.diffusion.losses import denoising_loss, discriminator_loss, generator_gan_loss, sample_timesteps
from workers.diffusion.schedule import NoiseSchedule
from workers.models.conditioning import ClassLabels, PromptTable
from workers.models.folders import load_model_folder, weight_dtype
from workers.models.gan_head import bottleneck, head_for
from workers.parallel.deepspeed import backward_and_step, load_engine, save_engine, step_metrics, wrap
from workers.roles.base import RoleWorker
from workers.roles.messages import CriticFeedback, GeneratedBatch, Key, as_tensor


@dataclass
class CriticSetup:
    micro_batch: int
    gan_discriminator_weight: float
    gan_generator_weight: float  # > 0: the critic runs its GAN head and needs real data
    deepspeed: dict  # DeepSpeed's config: optimizer, ZeRO stage, precision
    gradient_checkpointing: bool = False
    dm_loss: bool = True  # the generator uses the fake score's x0 (off: only the GAN gradient is sent)
    prompts: str | None = None  # the prompt table of a text-to-image teacher


class CriticModel(nn.Module):
    """The fake-score UNet and the GAN head as one module, so one optimizer steps both."""

    def __init__(self, unet, conditioning: ClassLabels | PromptTable, schedule: NoiseSchedule):
        super().__init__()
        self.unet, self.head = unet, head_for(unet)
        self.conditioning, self.schedule = conditioning, schedule

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The fake score's raw output (b, C, H, W), in x_t's dtype."""
        dtype = weight_dtype(self.unet)
        return self.unet(x_t.to(dtype), t, **self.conditioning.unet_kwargs(labels, dtype)).sample.to(x_t.dtype)

    def logits(self, x0: torch.Tensor, labels: torch.Tensor | None, rng: torch.Generator) -> torch.Tensor:
        """GAN logits (b,): x0 noised to t ~ UniformInt[0, T), told t, through encoder, mid block and head."""
        t = sample_timesteps(x0.shape[0], 0, self.schedule.num_train_timesteps - 1, rng)
        x_t = self.schedule.add_noise(x0, torch.randn(x0.shape, generator=rng), t)
        dtype = weight_dtype(self.unet)
        return self.head(bottleneck(self.unet, x_t.to(dtype), t, self.conditioning.unet_kwargs(labels, dtype))).to(
            x0.dtype
        )


class Critic(RoleWorker):
    role = "critic"

    def setup(self, teacher_dir: Path, setup: CriticSetup, real_data=None) -> None:
        """`real_data`: this rank's Ray Data iterator over real images (needed when the GAN is on)."""
        folder = load_model_folder(teacher_dir, self.device)  # the fake score starts as the teacher
        self.config, self.schedule = setup, folder.schedule
        self.model = CriticModel(
            folder.unet.train().requires_grad_(True), folder.conditioning(setup.prompts, self.device), folder.schedule
        )
        self.engine = wrap(self.model, setup.deepspeed, setup.gradient_checkpointing)
        self.shape = tuple(self.model.unet.config[k] for k in ("in_channels", "sample_size", "sample_size"))
        if setup.gan_generator_weight > 0:
            self.open_real_batches(real_data, setup.micro_batch, self.shape)

    def train_step(self, key: Key, *fakes: GeneratedBatch) -> dict[str, float]:
        """One critic update: denoising loss on the generator's samples (+ discriminator loss on real vs fake)."""
        with self.timed("train_step", images=sum(len(f.x0) for f in fakes), received=fakes):
            rng = self.rng(key)
            x0 = as_tensor(np.concatenate([f.x0 for f in fakes]))  # (b, C, H, W)
            labels = None if fakes[0].labels is None else as_tensor(np.concatenate([f.labels for f in fakes]))
            eps = torch.randn(x0.shape, generator=rng)
            t = sample_timesteps(x0.shape[0], 0, self.schedule.num_train_timesteps - 1, rng)
            loss_denoise = denoising_loss(
                self.engine(self.schedule.add_noise(x0, eps, t), t, labels), self.schedule, x0, eps, t
            )
            loss, metrics = loss_denoise, {"critic/denoising_loss": loss_denoise.item()}
            if self.real_batches is not None:
                real_images, real_labels = self.next_real_batch()
                logits_real = self.model.logits(
                    as_tensor(real_images), None if real_labels is None else as_tensor(real_labels), rng
                )
                logits_fake = self.model.logits(x0, labels, rng)
                loss_d = discriminator_loss(logits_real, logits_fake)
                loss = loss + self.config.gan_discriminator_weight * loss_d
                metrics |= {
                    "critic/discriminator_loss": loss_d.item(),
                    "critic/logits_real": logits_real.mean().item(),
                    "critic/logits_fake": logits_fake.mean().item(),
                }
            return metrics | step_metrics(self.engine, self.role, backward_and_step(self.engine, loss))

    def feedback(self, batch: GeneratedBatch) -> CriticFeedback:
        """The critic's x0 at (x_t, t) and the generator's GAN-loss gradient wrt x0; its weights untouched."""
        with self.timed("feedback", images=len(batch.x0), received=(batch,)):
            labels = None if batch.labels is None else as_tensor(batch.labels)
            x0_critic = None
            if self.config.dm_loss:  # one UNet pass per generator update that a run without DM loss skips
                x_t, t = as_tensor(batch.x_t), as_tensor(batch.t)
                with torch.no_grad():
                    x0_critic = self.schedule.to_x0(self.model(x_t, t, labels), x_t, t).float().numpy()
            if self.real_batches is None:
                return CriticFeedback(x0_critic, None, 0.0)
            x0 = as_tensor(batch.x0).requires_grad_(True)
            gan_loss = generator_gan_loss(self.model.logits(x0, labels, self.rng(batch.key)))
            # Gradient of the per-sample sum, wrt x0 only (no parameter gradients): the generator divides by its batch.
            (gan_grad,) = torch.autograd.grad(gan_loss * x0.shape[0], [x0])
            return CriticFeedback(x0_critic, gan_grad.float().numpy(), gan_loss.item())

    def save(self, directory: Path) -> None:
        save_engine(
            self.engine, self.model, Path(directory), self.rank, {"real_batches_taken": self.real_batches_taken}
        )

    def load(self, directory: Path) -> None:
        """Restore weights and optimizer, and fast-forward the real-data stream (right after setup)."""
        extra = load_engine(self.engine, self.model, Path(directory), self.rank)
        self.restart_real_batches(int(extra.get("real_batches_taken", 0)))
