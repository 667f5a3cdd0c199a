"""Evaluating a model folder (teacher or student): sample it, score the samples on the yardstick.

`StudentEvaluator` is the project's yardstick for pixel-space models (FD, precision, recall, class
accuracy, speed); `PipelineEvaluator` a latent FD for text-to-image students sampled through their
exported diffusers pipeline.
"""

from pathlib import Path

import numpy as np
import torch

from workers.data.shards import ImageArrays
from workers.models.folders import ModelFolder


def student_evaluator(teacher: ModelFolder, data: Path, eval_data: Path | None, num: int, seed: int):
    """The yardstick for this teacher's students: the data set's classifiers in pixel space, latent FD for pipelines.

    `eval_data` (a test split) is what FD compares with, the yardstick trained on `data`; unset: `data`
    itself, the yardstick trained on a held-out split of it."""
    from workers.data.shards import read_arrays
    from workers.data.sources import digits_arrays

    if teacher.layout != "pixels":
        from workers.models.conditioning import PROMPT_TABLE

        return PipelineEvaluator(read_arrays(data), Path(data) / PROMPT_TABLE, num, seed)
    train = read_arrays(data) if Path(data).exists() else digits_arrays()
    return StudentEvaluator(train, num, seed, test=None if eval_data is None else read_arrays(eval_data))


class StudentEvaluator:
    """FD and friends of a model folder against real data, on the project's yardstick."""

    def __init__(
        self,
        data: ImageArrays,
        num: int,
        seed: int = 0,
        repeats: int = 1,
        test: ImageArrays | None = None,
        fd_sizes: tuple[int, ...] = (),
        yardstick=None,
        progress: bool = False,
    ):
        """`data` trains the yardstick; FD compares with `test` (unset: `data`, the yardstick then trained on a
        held-out split of it). Metrics are of `num` samples, plus `fd_N` of N samples for each N in `fd_sizes`.
        `repeats` > 1: every metric is the mean over sampling seeds seed .. seed + repeats - 1, and `fd_std`
        their spread (the FD of 1,000 digits moves by about 0.5 between seeds). `yardstick`: the classifiers
        to measure with; unset: the cached ones for this data (trained on first use). `progress`: a progress bar
        while each model samples."""
        from workers.evaluation.quality import ReferenceSet
        from workers.evaluation.yardstick import load_or_train_yardstick

        self.num, self.seed, self.repeats, self.fd_sizes = num, seed, repeats, tuple(fd_sizes)
        self.progress = progress
        self.yardstick = yardstick or load_or_train_yardstick(data, test)
        self.reference = ReferenceSet(data if test is None else test, self.yardstick)
        self.class_names = (test if test is not None else data).class_names

    def __call__(self, folder_path: Path, steps: int | None = None, sampler: str = "ddim") -> dict[str, float]:
        """The metrics of `folder_path` sampled with `steps` (teachers: of `sampler`, ddim or dpm_solver)."""
        runs = [self.evaluate_seed(folder_path, steps, self.seed + i, sampler) for i in range(self.repeats)]
        mean = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
        return mean | ({"fd_std": float(np.std([r["fd"] for r in runs]))} if self.repeats > 1 else {})

    def evaluate_seed(self, folder_path: Path, steps: int | None, seed: int, sampler: str = "ddim") -> dict[str, float]:
        from workers.evaluation.quality import evaluate_at_sizes
        from workers.models.inference import sample_from_folder

        num = max([self.num, *self.fd_sizes])
        result = sample_from_folder(folder_path, steps, num, seed, sampler=sampler, progress=self.progress)
        metrics = evaluate_at_sizes(result.images, result.labels, self.reference, self.num, self.fd_sizes)
        metrics["seconds_per_image"] = result.seconds_per_image
        metrics["network_passes"] = result.network_passes
        return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, np.floating)) and v is not None}

    def grid(self, folder_path: Path, out: Path, steps: int | None = None, sampler: str = "ddim") -> Path:
        """A PNG of 100 samples, one row per class, each row named."""
        from workers.evaluation.grids import save_grid
        from workers.models.inference import sample_from_folder

        result = sample_from_folder(folder_path, steps, 100, self.seed, sampler=sampler)
        return save_grid(result.images, out, result.labels, self.class_names)


LATENT_FD_SIZE = 8  # latents are average-pooled to at most 8x8 per channel before their Frechet distance


class PipelineEvaluator:
    """A text-to-image student, sampled through its exported diffusers pipeline at guidance 0 from the
    cached prompt embeddings: Frechet distance of its latents to the real latents (pooled to 8x8,
    so it is comparable within one data set, not to image FID)."""

    def __init__(self, reference, prompts: Path, num: int, seed: int = 0):
        from workers.models.conditioning import PromptTable

        self.reference, self.prompts, self.num, self.seed = reference, PromptTable(prompts), num, seed

    def sample(self, folder_path: Path, num: int, output_type: str) -> tuple[np.ndarray, float, int]:
        """`num` samples (latents or images, NCHW) over prompts in turn; seconds per image; UNet passes per image."""
        import json
        import time

        from workers.models.folders import MANIFEST
        from workers.models.inference import balanced_labels
        from workers.models.pipelines import load_pipeline

        timesteps = json.loads((Path(folder_path) / MANIFEST).read_text())["timesteps"]
        pipe = load_pipeline(folder_path)
        pipe.set_progress_bar_config(disable=True)
        labels = torch.from_numpy(balanced_labels(num, self.prompts.count))
        conditioning = self.prompts.unet_kwargs(labels)
        extra = (
            {"pooled_prompt_embeds": conditioning["added_cond_kwargs"]["text_embeds"]}
            if "added_cond_kwargs" in conditioning
            else {}
        )
        start = time.perf_counter()
        with torch.no_grad():
            out = pipe(
                prompt_embeds=conditioning["encoder_hidden_states"],
                **extra,
                num_inference_steps=len(timesteps),
                timesteps=timesteps,
                guidance_scale=0.0,
                output_type=output_type,
                generator=torch.Generator().manual_seed(self.seed),
            ).images
        seconds = (time.perf_counter() - start) / num
        out = (
            out.float().numpy() if output_type == "latent" else out.transpose(0, 3, 1, 2) * 2 - 1
        )  # np images are NHWC in [0, 1]
        return out, seconds, len(timesteps)

    def __call__(self, folder_path: Path, steps: int | None = None) -> dict[str, float]:
        from workers.evaluation.distances import frechet_distance

        latents, seconds, passes = self.sample(folder_path, self.num, "latent")
        pool = lambda x: (
            torch.nn.functional.adaptive_avg_pool2d(torch.tensor(x), min(LATENT_FD_SIZE, x.shape[-1]))
            .flatten(1)
            .numpy()
        )  # noqa: E731
        return {
            "latent_fd": frechet_distance(pool(latents), pool(self.reference.images)),
            "seconds_per_image": seconds,
            "network_passes": float(passes),
        }

    def grid(self, folder_path: Path, out: Path) -> Path:
        """A PNG of 20 images decoded by the pipeline's VAE."""
        from workers.evaluation.grids import save_grid

        return save_grid(self.sample(folder_path, 20, "np")[0], out)
