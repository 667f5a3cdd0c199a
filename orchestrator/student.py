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
    """Write the student's model folder: the teacher's architecture with the student's weights and sampler.

    A text-to-image teacher's student is a whole diffusers pipeline folder (workers/pipelines.py)."""
    if teacher.layout != "pixels":
        from workers.pipelines import LoraSetup, export_pipeline

        return export_pipeline(weights, teacher.path, list(student.timesteps), path, method, LoraSetup.of(student.lora_rank, student.lora_alpha))
    unet = type(teacher.unet).from_config(teacher.unet.config)
    unet.load_state_dict(weights)
    manifest = ModelManifest(kind="student", num_classes=teacher.manifest.num_classes, guidance_scale=1.0, timesteps=list(student.timesteps), method=method)
    return save_model_folder(path, unet, student_scheduler_config(teacher.scheduler_config, student.sampler), manifest)


def student_evaluator(teacher: ModelFolder, data: Path, num: int, seed: int):
    """The yardstick for this teacher's students: the digits yardstick in pixel space, latent FD for pipelines."""
    from workers.data import digits_arrays, read_arrays

    if teacher.layout != "pixels":
        from workers.conditioning import PROMPT_TABLE

        return PipelineEvaluator(read_arrays(data), Path(data) / PROMPT_TABLE, num, seed)
    return StudentEvaluator(read_arrays(data) if Path(data).exists() else digits_arrays(), num, seed)


class StudentEvaluator:
    """FD and friends of a model folder against the real data, on the project's yardstick."""

    def __init__(self, reference, num: int, seed: int = 0, repeats: int = 1, yardstick=None):
        """`repeats` > 1: every metric is the mean over sampling seeds seed .. seed + repeats - 1, and
        `fd_std` their spread (the FD of 1,000 digits moves by about 0.5 between seeds).
        `yardstick`: the classifiers to measure with; unset: the cached ones in runs/yardstick."""
        from workers.evaluation import load_or_train_yardstick

        self.reference, self.num, self.seed, self.repeats = reference, num, seed, repeats
        self.yardstick = yardstick or load_or_train_yardstick()

    def __call__(self, folder_path: Path, steps: int | None = None) -> dict[str, float]:
        runs = [self.evaluate_seed(folder_path, steps, self.seed + i) for i in range(self.repeats)]
        mean = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
        return mean | ({"fd_std": float(np.std([r["fd"] for r in runs]))} if self.repeats > 1 else {})

    def evaluate_seed(self, folder_path: Path, steps: int | None, seed: int) -> dict[str, float]:
        from workers.evaluation import evaluate_images
        from workers.inference import sample_from_folder

        result = sample_from_folder(folder_path, steps, self.num, seed)
        metrics = evaluate_images(result.images, result.labels, self.reference, self.yardstick)
        metrics["seconds_per_image"] = result.seconds_per_image
        metrics["network_passes"] = result.network_passes
        return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, np.floating)) and v is not None}

    def grid(self, folder_path: Path, out: Path) -> Path:
        """A PNG of 100 samples (ten per class)."""
        from workers.images import save_grid
        from workers.inference import sample_from_folder

        return save_grid(sample_from_folder(folder_path, None, 100, self.seed).images, out)


LATENT_FD_SIZE = 8  # latents are average-pooled to at most 8x8 per channel before their Frechet distance


class PipelineEvaluator:
    """A text-to-image student, sampled through its exported diffusers pipeline at guidance 0 from the
    cached prompt embeddings: Frechet distance of its latents to the real latents (pooled to 8x8,
    so it is comparable within one data set, not to image FID)."""

    def __init__(self, reference, prompts: Path, num: int, seed: int = 0):
        from workers.conditioning import PromptTable

        self.reference, self.prompts, self.num, self.seed = reference, PromptTable(prompts), num, seed

    def sample(self, folder_path: Path, num: int, output_type: str) -> tuple[np.ndarray, float, int]:
        """`num` samples (latents or images, NCHW) over prompts in turn; seconds per image; UNet passes per image."""
        import json
        import time

        from workers.inference import balanced_labels
        from workers.models import MANIFEST
        from workers.pipelines import load_pipeline

        timesteps = json.loads((Path(folder_path) / MANIFEST).read_text())["timesteps"]
        pipe = load_pipeline(folder_path)
        pipe.set_progress_bar_config(disable=True)
        labels = torch.from_numpy(balanced_labels(num, self.prompts.count))
        conditioning = self.prompts.unet_kwargs(labels)
        extra = {"pooled_prompt_embeds": conditioning["added_cond_kwargs"]["text_embeds"]} if "added_cond_kwargs" in conditioning else {}
        start = time.perf_counter()
        with torch.no_grad():
            out = pipe(prompt_embeds=conditioning["encoder_hidden_states"], **extra, num_inference_steps=len(timesteps), timesteps=timesteps,
                       guidance_scale=0.0, output_type=output_type, generator=torch.Generator().manual_seed(self.seed)).images
        seconds = (time.perf_counter() - start) / num
        out = out.float().numpy() if output_type == "latent" else out.transpose(0, 3, 1, 2) * 2 - 1  # np images are NHWC in [0, 1]
        return out, seconds, len(timesteps)

    def __call__(self, folder_path: Path, steps: int | None = None) -> dict[str, float]:
        from workers.evaluation import frechet_distance

        latents, seconds, passes = self.sample(folder_path, self.num, "latent")
        pool = lambda x: torch.nn.functional.adaptive_avg_pool2d(torch.tensor(x), min(LATENT_FD_SIZE, x.shape[-1])).flatten(1).numpy()  # noqa: E731
        return {"latent_fd": frechet_distance(pool(latents), pool(self.reference.images)), "seconds_per_image": seconds, "network_passes": float(passes)}

    def grid(self, folder_path: Path, out: Path) -> Path:
        """A PNG of 20 images decoded by the pipeline's VAE."""
        from workers.images import save_grid

        return save_grid(self.sample(folder_path, 20, "np")[0], out)
