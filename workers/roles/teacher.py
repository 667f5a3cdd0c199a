"""The teacher role: the frozen pretrained model. It answers 'what is x0?' for the DM loss (the real
score) and makes the shifted reconstruction loss's target."""

from dataclasses import dataclass
from pathlib import Path

import torch

from workers.diffusion.imagine_flash import shifted_timesteps, srl_target
from workers.models.folders import Denoiser, load_model_folder
from workers.parallel.deepspeed import wrap_frozen
from workers.roles.base import RoleWorker
from workers.roles.messages import GeneratedBatch, TeacherAnswer, as_tensor


@dataclass
class TeacherSetup:
    guidance_scale: float  # CFG in the DM loss
    dm: bool  # answer the DM loss's x0
    srl: bool  # make SRL targets
    gamma_scale: float = 1.0  # gamma(t) = clip(scale * t + shift + jitter, 0, T-1)
    gamma_shift: float = 0.0
    gamma_jitter: int = 0
    srl_teacher_steps: int = 1
    srl_guidance_scale: float = 1.0
    deepspeed: dict | None = None  # DeepSpeed's config; ZeRO stage 3 shards the parameters across the teacher's ranks
    prompts: str | None = None  # the prompt table of a text-to-image teacher


class Teacher(RoleWorker):
    role = "teacher"

    def setup(self, teacher_dir: Path, setup: TeacherSetup) -> None:
        folder = load_model_folder(teacher_dir, self.device)
        unet = wrap_frozen(folder.unet, setup.deepspeed or {})
        self.denoiser = Denoiser(unet, folder.schedule, folder.conditioning(setup.prompts, self.device))
        self.config = setup

    @torch.no_grad()
    def answer(self, batch: GeneratedBatch) -> TeacherAnswer:
        """The DM loss's x0 at the batch's (x_t, t) and the SRL target of its x0, each when switched on."""
        c, schedule = self.config, self.denoiser.schedule
        labels = None if batch.labels is None else as_tensor(batch.labels).to(self.device)
        x0 = srl = None
        if c.dm:
            with self.timed("dm_x0", images=len(batch.x_t), received=(batch,)):
                x0 = self.denoiser.x0(
                    as_tensor(batch.x_t).to(self.device), as_tensor(batch.t).to(self.device), labels, c.guidance_scale
                )
                x0 = x0.float().cpu().numpy()
        if c.srl:
            with self.timed("srl_target", images=len(batch.x0), received=() if c.dm else (batch,)):
                rng = self.rng(batch.key)
                gamma = shifted_timesteps(
                    as_tensor(batch.student_t),
                    c.gamma_scale,
                    c.gamma_shift,
                    c.gamma_jitter,
                    schedule.num_train_timesteps,
                    rng,
                )
                teacher_x0 = lambda x_t, t: self.denoiser.x0(
                    x_t.to(self.device), t.to(self.device), labels, c.srl_guidance_scale
                ).cpu()  # noqa: E731
                srl = (
                    srl_target(teacher_x0, schedule, as_tensor(batch.x0), gamma, c.srl_teacher_steps, rng)
                    .float()
                    .numpy()
                )
        return TeacherAnswer(x0, srl)
