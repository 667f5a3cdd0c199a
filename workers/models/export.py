"""A student as a model folder: the teacher's architecture, the student's weights, its few-step sampler as a
diffusers scheduler (LCMScheduler with explicit timesteps, or noise-corrected DDIM)."""

from pathlib import Path

import torch

from workers.models.folders import ModelFolder, ModelManifest, save_model_folder
from workers.models.pipelines import LoraSetup


def student_scheduler_config(teacher_scheduler_config: dict, sampler: str = "lcm") -> dict:
    """The student's sampler as a diffusers scheduler on the teacher's betas.

    lcm: diffusers' LCMScheduler (x0 at each timestep, re-noised to the next), without x0 clipping
    so inference is exactly the sampler the student trained with; ddim and noise_corrected_ddim:
    this project's NoiseCorrectedDDIMScheduler with noise correction off or on.
    """
    from diffusers import LCMScheduler

    from workers.diffusion.noise_correction import NoiseCorrectedDDIMScheduler

    if sampler == "lcm":
        config = dict(LCMScheduler.from_config(teacher_scheduler_config, clip_sample=False).config)
        return {"_class_name": "LCMScheduler", **config}
    scheduler = NoiseCorrectedDDIMScheduler.from_config(
        teacher_scheduler_config, noise_correction=sampler == "noise_corrected_ddim"
    )
    return {"_class_name": "NoiseCorrectedDDIMScheduler", **dict(scheduler.config)}


def export_student(
    weights: dict[str, torch.Tensor],
    teacher: ModelFolder,
    timesteps: list[int],
    sampler: str,
    path: Path,
    method: str = "dmd2",
    lora: LoraSetup | None = None,
) -> Path:
    """Write the student's model folder: the teacher's architecture with the student's weights and sampler.

    A text-to-image teacher's student is a whole diffusers pipeline folder (workers/models/pipelines.py)."""
    if teacher.layout != "pixels":
        from workers.models.pipelines import export_pipeline

        return export_pipeline(weights, teacher.path, list(timesteps), path, method, lora)
    unet = type(teacher.unet).from_config(teacher.unet.config)
    unet.load_state_dict(weights)
    manifest = ModelManifest(
        kind="student",
        num_classes=teacher.manifest.num_classes,
        guidance_scale=1.0,
        timesteps=list(timesteps),
        method=method,
    )
    return save_model_folder(path, unet, student_scheduler_config(teacher.scheduler_config, sampler), manifest)
