"""The teacher role: the frozen pretrained model, answering 'what is x0?' for the DM loss (the real score)."""

from pathlib import Path

import numpy as np
import torch

from workers.messages import GeneratedBatch, as_tensor
from workers.models import Denoiser, load_model_folder
from workers.role import RoleWorker


class Teacher(RoleWorker):
    role = "teacher"

    def setup(self, teacher_dir: Path, guidance_scale: float) -> None:
        folder = load_model_folder(teacher_dir, self.device)
        folder.unet.requires_grad_(False)
        self.denoiser = Denoiser(folder.unet, folder.schedule, folder.manifest.num_classes)
        self.guidance_scale = guidance_scale

    @torch.no_grad()
    def x0(self, batch: GeneratedBatch) -> np.ndarray:
        """The teacher's x0 estimate (b, C, H, W) at the batch's (x_t, t), with CFG."""
        with self.timed("x0"):
            labels = None if batch.labels is None else as_tensor(batch.labels).to(self.device)
            x0 = self.denoiser.x0(as_tensor(batch.x_t).to(self.device), as_tensor(batch.t).to(self.device), labels, self.guidance_scale)
            return x0.float().cpu().numpy()
