"""Text-to-image teachers kept as diffusers pipeline folders (Stable Diffusion 1.5 and SDXL layouts).

What happens here runs once, in a job or on the driver, never inside a role's step:
- `encode_data_set`: a captioned image data set becomes VAE latents, and each distinct caption a
  row of the prompt table (workers/models/conditioning.py), through the pipeline's own `encode_prompt`.
- `export_pipeline`: a student becomes a whole pipeline folder that `DiffusionPipeline.from_pretrained`
  loads and runs at guidance 0 with its few-step scheduler; a LoRA student also leaves weights
  that `load_lora_weights` accepts on the teacher's pipeline.

Everything is read with `use_safetensors=True`: a folder holding only pickles is refused.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from workers.errors import ModelFolderError
from workers.models.conditioning import PROMPT_TABLE, write_prompt_table
from workers.models.folders import ModelManifest, layout_of, write_manifest

LORA_FOLDER = "lora"  # inside an exported student: pytorch_lora_weights.safetensors
ENCODE_BATCH = 64


@dataclass
class LoraSetup:
    """The generator trained as a LoRA on the teacher's attention projections (peft)."""

    rank: int
    alpha: float
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")

    @classmethod
    def of(cls, rank: int, alpha: float) -> "LoraSetup | None":
        """From student.lora_rank / lora_alpha: None for rank 0 (the whole UNet trains); alpha 0 means alpha = rank."""
        return cls(rank, alpha or rank) if rank else None

    def peft_config(self):
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank, lora_alpha=self.alpha, init_lora_weights="gaussian", target_modules=list(self.target_modules)
        )


def load_pipeline(path: Path, **components):
    """The pipeline in `path` from safetensors; `components` replace or skip parts (e.g. unet=None)."""
    from diffusers import DiffusionPipeline

    layout_of(path)  # refuses pipelines other than SD 1.5 / SDXL with a clear message
    try:
        return DiffusionPipeline.from_pretrained(str(path), use_safetensors=True, **components)
    except (OSError, ValueError) as error:
        raise ModelFolderError(
            f"{path} could not be loaded as a diffusers pipeline from safetensors ({str(error).splitlines()[0]}); "
            "save it with save_pretrained(safe_serialization=True)"
        ) from None


def image_size(pipe) -> int:
    """Pixels per side of the images whose latents the UNet works on."""
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


@torch.no_grad()
def encode_prompts(pipe, prompts: list[str]) -> dict[str, torch.Tensor]:
    """The prompt table's tensors: one row per prompt and a last row for the unconditional prompt.

    The unconditional row is what the pipeline itself uses for classifier-free guidance with no
    negative prompt: the empty prompt's embedding (SD 1.5), zeros (SDXL's force_zeros_for_empty_prompt).
    """
    sdxl = hasattr(pipe, "text_encoder_2")
    embeds, pooled = [], []
    for begin in range(0, len(prompts), ENCODE_BATCH):
        out = pipe.encode_prompt(
            prompt=prompts[begin : begin + ENCODE_BATCH],
            device="cpu",
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
        )
        embeds.append(out[0])  # (b, L, D)
        if sdxl:
            pooled.append(out[2])  # (b, D2)
    unconditional = pipe.encode_prompt(
        prompt=[prompts[0]], device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True
    )
    table = {"prompt_embeds": torch.cat(embeds + [unconditional[1]])}
    if sdxl:
        size = image_size(pipe)
        # add_time_ids: original size, crop top-left, target size; the training images are whole, uncropped
        table |= {
            "pooled_prompt_embeds": torch.cat(pooled + [unconditional[3]]),
            "time_ids": torch.tensor([size, size, 0, 0, size, size], dtype=torch.float32),
        }
    return table


@torch.no_grad()
def encode_images(pipe, images: np.ndarray) -> np.ndarray:
    """Images (N, C, h, w) in [-1, 1] -> scaled latents (N, 4, S, S) the UNet trains on (the posterior mean)."""
    size, vae = image_size(pipe), pipe.vae
    latents = []
    for begin in range(0, len(images), ENCODE_BATCH):
        x = torch.from_numpy(images[begin : begin + ENCODE_BATCH]).float()
        if x.shape[1] == 1:  # grey -> RGB
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] != size:
            x = torch.nn.functional.interpolate(
                x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            ).clamp(-1, 1)
        latents.append(vae.encode(x).latent_dist.mean * vae.config.scaling_factor)
    return torch.cat(latents).float().numpy()


def encode_data_set(
    teacher: Path,
    images: np.ndarray,
    captions: list[str],
    out: Path,
    overwrite: bool = False,
    rows_per_shard: int = 1000,
):
    """Write the latent data set `out`: Parquet shards of latents labelled by prompt index, and the prompt table."""
    from workers.data.shards import ImageArrays, read_info, write_shards

    pipe = load_pipeline(teacher)
    prompts = sorted(set(captions))
    index = {prompt: i for i, prompt in enumerate(prompts)}
    table = encode_prompts(pipe, prompts)
    latents = encode_images(pipe, images)
    labels = np.array([index[c] for c in captions], dtype=np.int64)
    write_shards(
        ImageArrays(latents, labels, list(captions), prompts, space="latents"),
        out,
        rows_per_shard=rows_per_shard,
        overwrite=overwrite,
    )
    write_prompt_table(Path(out) / PROMPT_TABLE, **table)
    return read_info(out), len(prompts)


def lcm_scheduler(teacher_scheduler_config: dict):
    """diffusers' LCMScheduler on the teacher's noise schedule, without x0 clipping (the sampler the student
    trained with).
    Keys only other schedulers know (SDXL's Euler sigmas) are left out rather than warned about."""
    import inspect

    from diffusers import LCMScheduler

    known = inspect.signature(LCMScheduler.__init__).parameters
    return LCMScheduler.from_config(
        {k: v for k, v in teacher_scheduler_config.items() if k in known}, clip_sample=False
    )


def lcm_default_timesteps(scheduler_config: dict, steps: int) -> list[int]:
    """The timesteps diffusers' LCMScheduler picks for `num_inference_steps=steps`."""
    scheduler = lcm_scheduler(scheduler_config)
    scheduler.set_timesteps(steps)
    return [int(t) for t in scheduler.timesteps]


def export_pipeline(
    weights: dict[str, torch.Tensor],
    teacher: Path,
    timesteps: list[int],
    path: Path,
    method: str,
    lora: LoraSetup | None = None,
) -> Path:
    """Write the student as a pipeline folder (teacher's text encoders, tokenizers and VAE; the student's
    UNet; LCMScheduler), its manifest and a model card. `weights`: the full UNet, or a LoRA's parameters only."""

    path = Path(path)
    pipe = load_pipeline(teacher)
    if lora is not None:
        lora_dir = save_lora(weights, pipe, lora, path / LORA_FOLDER)
        pipe = load_pipeline(teacher)  # a clean teacher: the LoRA goes in through diffusers' own loader
        pipe.load_lora_weights(str(lora_dir))
        pipe.fuse_lora()
        pipe.unload_lora_weights()
    else:
        pipe.unet.load_state_dict(weights)
    pipe.scheduler = lcm_scheduler(dict(pipe.scheduler.config))
    pipe.save_pretrained(str(path), safe_serialization=True)
    manifest = ModelManifest(kind="student", guidance_scale=1.0, timesteps=list(timesteps), method=method)
    write_manifest(path, manifest)
    default = lcm_default_timesteps(dict(pipe.scheduler.config), len(timesteps)) == list(timesteps)
    (path / "README.md").write_text(model_card(type(pipe).__name__, timesteps, method, default, lora is not None))
    return path


def save_lora(weights: dict[str, torch.Tensor], pipe, lora: LoraSetup, out: Path) -> Path:
    """Save the generator's LoRA parameters in diffusers' LoRA format (`load_lora_weights` reads it)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    unet = pipe.unet
    unet.add_adapter(lora.peft_config())
    missing, unexpected = unet.load_state_dict(weights, strict=False)
    lora_missing = [k for k in missing if "lora_" in k]
    if unexpected or lora_missing:
        raise ModelFolderError(
            f"the generator's LoRA weights do not fit the teacher's UNet (missing {lora_missing[:2]}, unexpected "
            f"{unexpected[:2]}); "
            "distill with the same student.lora settings"
        )
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    type(pipe).save_lora_weights(str(out), unet_lora_layers=layers, safe_serialization=True)
    return out


def model_card(pipeline: str, timesteps: list[int], method: str, default_timesteps: bool, lora: bool) -> str:
    steps = len(timesteps)
    call = f"num_inference_steps={steps}" + ("" if default_timesteps else f", timesteps={list(timesteps)}")
    lora_text = (
        (
            f"\nThe student was trained as a LoRA; `{LORA_FOLDER}/` holds it for the teacher's pipeline:\n\n"
            f"    teacher = DiffusionPipeline.from_pretrained(TEACHER)\n    "
            f'teacher.load_lora_weights("{LORA_FOLDER}")\n'
        )
        if lora
        else ""
    )
    return f"""---
library_name: diffusers
tags: [text-to-image, distillation, {method}]
---
# {steps}-step student ({method})

Distilled with flashdistill. Sample it with **{steps} step(s)** at the timesteps {list(timesteps)} and
**guidance 0** (classifier-free guidance is distilled into the student):

    pipe = {pipeline}.from_pretrained(THIS_FOLDER)
    image = pipe(prompt, {call}, guidance_scale=0).images[0]
{lora_text}"""
