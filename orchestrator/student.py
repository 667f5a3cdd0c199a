"""The student as a model folder (diffusers LCMScheduler with its explicit timesteps), and its FD."""

from pathlib import Path

import numpy as np
import torch

from orchestrator.config import StudentConfig
from workers.models import ModelFolder, ModelManifest, save_model_folder


def student_scheduler_config(teacher_scheduler_config: dict, sampler: str = "lcm") -> dict:
    """The student's sampler as a diffusers scheduler on the teacher's betas.

    lcm: diffusers' LCMScheduler (x0 at each timestep, re-noised to the next), without x0 clipping
    so inference is exactly the sampler the student trained with; ddim and noise_corrected_ddim:
    this project's NoiseCorrectedDDIMScheduler with noise correction off or on.
    """
    from diffusers import LCMScheduler

    from workers.noise_correction import NoiseCorrectedDDIMScheduler

    if sampler == "lcm":
        config = dict(LCMScheduler.from_config(teacher_scheduler_config, clip_sample=False).config)
        return {"_class_name": "LCMScheduler", **config}
    scheduler = NoiseCorrectedDDIMScheduler.from_config(teacher_scheduler_config, noise_correction=sampler == "noise_corrected_ddim")
    return {"_class_name": "NoiseCorrectedDDIMScheduler", **dict(scheduler.config)}


def export_student(weights: dict[str, torch.Tensor], teacher: ModelFolder, student: StudentConfig, path: Path, method: str = "dmd2") -> Path:
    """Write the student's model folder: the teacher's architecture with the student's weights and sampler."""
    unet = type(teacher.unet).from_config(teacher.unet.config)
    unet.load_state_dict(weights)
    manifest = ModelManifest(kind="student", num_classes=teacher.manifest.num_classes, guidance_scale=1.0, timesteps=list(student.timesteps), method=method)
    return save_model_folder(path, unet, student_scheduler_config(teacher.scheduler_config, student.sampler), manifest)


class StudentEvaluator:
    """FD and friends of a model folder against the real data, on the project's yardstick."""

    def __init__(self, reference, num: int, seed: int = 0):
        from workers.evaluation import load_or_train_yardstick

        self.reference, self.num, self.seed = reference, num, seed
        self.yardstick = load_or_train_yardstick()

    def __call__(self, folder_path: Path, steps: int | None = None) -> dict[str, float]:
        from workers.evaluation import evaluate_images
        from workers.inference import sample_from_folder

        result = sample_from_folder(folder_path, steps, self.num, self.seed)
        metrics = evaluate_images(result.images, result.labels, self.reference, self.yardstick)
        metrics["seconds_per_image"] = result.seconds_per_image
        metrics["network_passes"] = result.network_passes
        return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, np.floating)) and v is not None}
