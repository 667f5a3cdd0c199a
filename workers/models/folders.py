"""Diffusion networks and the model folders this project saves and loads.

A pixel-space model folder (teacher or student) is diffusers-format plus one manifest:

    DIR/flashdistill.json                          ModelManifest: kind, classes, guidance, timesteps
    DIR/unet/config.json                           diffusers UNet2DModel config
    DIR/unet/diffusion_pytorch_model.safetensors   weights (safetensors only, never a pickle)
    DIR/scheduler/scheduler_config.json            the sampler's diffusers scheduler config

A text-to-image model folder is a diffusers pipeline folder (`model_index.json`) in the Stable
Diffusion 1.5 or SDXL layout, as users keep their weights; a student exported from one adds the
same manifest. Only its UNet and scheduler are loaded here: the roles work in latent space and
read text embeddings from a prompt table (workers/models/conditioning.py).

Loading never unpickles: weights come from safetensors, and a folder that holds only a pickle
(`.bin`, `.pt`, `.ckpt`) is refused before anything in it is read.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from workers.diffusion.schedule import NoiseSchedule, guided
from workers.errors import ModelFolderError
from workers.models.conditioning import ClassLabels, PromptTable

MANIFEST = "flashdistill.json"
WEIGHTS = "diffusion_pytorch_model.safetensors"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
PIPELINE_LAYOUTS = {"StableDiffusionPipeline": "sd15", "StableDiffusionXLPipeline": "sdxl"}
"""diffusers pipeline class -> layout name; "pixels" is this project's own class-conditional folder."""


@dataclass
class ModelManifest:
    """What a model folder is, beyond its diffusers configs."""

    kind: str  # "teacher" or "student"
    num_classes: int = 0  # 0: unconditional; else labels 0..num_classes-1 and null label num_classes
    guidance_scale: float = 1.0  # classifier-free guidance used when sampling (1: none)
    timesteps: list[int] = field(default_factory=list)  # a student's inference timesteps, high to low
    method: str = ""  # how it was made, e.g. "ddpm", "dmd2"
    format_version: int = FORMAT_VERSION


def build_unet(
    num_classes: int,
    sample_size: int = 8,
    channels: int = 1,
    block_out_channels=(16, 32, 64),
    layers_per_block: int = 1,
    norm_num_groups: int = 8,
    attention: bool = False,
):
    """A fresh UNet2DModel (the fields of the teacher config's `unet`); with classes, one extra embedding is
    the null label used by CFG."""
    from diffusers import UNet2DModel

    levels = len(block_out_channels)
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=channels,
        layers_per_block=layers_per_block,
        block_out_channels=tuple(block_out_channels),
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        norm_num_groups=norm_num_groups,
        num_class_embeds=num_classes + 1 if num_classes else None,
    )


def save_model_folder(out_dir: Path, unet, scheduler_config: dict, manifest: ModelManifest) -> Path:
    """Write a model folder (see the module docstring); weights as safetensors."""
    out_dir = Path(out_dir)
    (out_dir / "unet").mkdir(parents=True, exist_ok=True)
    (out_dir / "scheduler").mkdir(parents=True, exist_ok=True)
    unet.save_config(out_dir / "unet")
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in unet.state_dict().items()}
    save_file(state, str(out_dir / "unet" / WEIGHTS))
    (out_dir / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config, indent=2))
    write_manifest(out_dir, manifest)
    return out_dir


def write_manifest(out_dir: Path, manifest: ModelManifest) -> None:
    (Path(out_dir) / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2))


@dataclass
class ModelFolder:
    unet: torch.nn.Module
    scheduler_config: dict
    manifest: ModelManifest
    path: Path
    layout: str = "pixels"  # or a PIPELINE_LAYOUTS value

    @property
    def schedule(self) -> NoiseSchedule:
        return NoiseSchedule.from_scheduler_config(self.scheduler_config)

    def conditioning(self, prompts: Path | None = None, device: str = "cpu") -> ClassLabels | PromptTable:
        """What this model's labels mean: its classes, or for text-to-image layouts the prompt table `prompts`."""
        if self.layout == "pixels":
            return ClassLabels(self.manifest.num_classes)
        if prompts is None:
            raise ModelFolderError(
                f"{self.path} is a text-to-image ({self.layout}) pipeline: sample it with diffusers' "
                f"DiffusionPipeline.from_pretrained "
                "(its README.md says how); distilling it needs a prompt table from `python -m jobs.encode_latents`"
            )
        return PromptTable(prompts, device)


def layout_of(path: Path) -> str:
    """ "pixels", or the layout of a diffusers pipeline folder; an unsupported pipeline is refused."""
    index = Path(path) / "model_index.json"
    if not index.is_file():
        return "pixels"
    try:
        name = json.loads(index.read_text()).get("_class_name", "")
    except json.JSONDecodeError as error:
        raise ModelFolderError(
            f"{index} is not valid JSON ({error}); re-save the pipeline with save_pretrained"
        ) from None
    if name not in PIPELINE_LAYOUTS:
        raise ModelFolderError(
            f"{path} holds a {name or 'unnamed'} pipeline; this project distills {', '.join(PIPELINE_LAYOUTS)} (SD "
            f"1.5 and SDXL layouts)"
        )
    return PIPELINE_LAYOUTS[name]


def check_model_folder(path: Path) -> ModelManifest:
    """Cheap checks that `path` is a model folder this project saved; returns its manifest."""
    path = Path(path)
    if not path.is_dir():
        raise ModelFolderError(
            f"model folder {path} does not exist: train a teacher first (python -m jobs.train_teacher), make a tiny "
            f"SD 1.5 / SDXL one (python -m jobs.make_tiny_teacher), or fix the path"
        )
    if layout_of(path) != "pixels":
        return _check_pipeline_folder(path)
    pickles = sorted(p.name for p in path.rglob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickles and not (path / "unet" / WEIGHTS).is_file():
        raise ModelFolderError(
            f"{path} holds pickled weights ({', '.join(pickles)}), which can run code when loaded: "
            f"convert them to safetensors (safetensors.torch.save_file) on a machine you trust"
        )
    for required in (MANIFEST, "unet/config.json", f"unet/{WEIGHTS}", "scheduler/scheduler_config.json"):
        if not (path / required).is_file():
            raise ModelFolderError(
                f"{path} is not a model folder saved by this project: {required} is missing; point at a folder "
                f"written by jobs.train_teacher or jobs.distill"
            )
    return _read_manifest(path)


def _read_manifest(path: Path) -> ModelManifest:
    try:
        raw = json.loads((path / MANIFEST).read_text())
        manifest = ModelManifest(**raw)
    except (json.JSONDecodeError, TypeError) as error:
        raise ModelFolderError(
            f"{path / MANIFEST} is not a valid manifest ({error}); re-save the model with this project"
        ) from None
    if manifest.format_version != FORMAT_VERSION:
        raise ModelFolderError(
            f"{path} has format_version {manifest.format_version}, this project reads {FORMAT_VERSION}: re-save it "
            f"with this version"
        )
    return manifest


def _check_pipeline_folder(path: Path) -> ModelManifest:
    """A diffusers pipeline folder with safetensors UNet weights; a user's own folder has no manifest: a teacher."""
    unet_dir = path / "unet"
    if not list(unet_dir.glob("*.safetensors")):
        pickles = sorted(p.name for p in unet_dir.glob("*") if p.suffix in PICKLE_SUFFIXES)
        hint = (
            f"it holds pickled weights ({', '.join(pickles)}), which can run code when loaded: convert them to "
            f"safetensors on a machine you trust"
            if pickles
            else "save the pipeline with save_pretrained(safe_serialization=True)"
        )
        raise ModelFolderError(f"{unet_dir} has no .safetensors weights: {hint}")
    if not (path / "scheduler" / "scheduler_config.json").is_file():
        raise ModelFolderError(
            f"{path}/scheduler/scheduler_config.json is missing: save the whole pipeline with save_pretrained"
        )
    return _read_manifest(path) if (path / MANIFEST).is_file() else ModelManifest(kind="teacher")


def load_model_folder(path: Path, device: str = "cpu") -> ModelFolder:
    """Load a model folder from safetensors only; nothing in the folder is unpickled or executed."""
    from diffusers import UNet2DModel

    path = Path(path)
    manifest = check_model_folder(path)
    layout = layout_of(path)
    if layout != "pixels":
        from diffusers import UNet2DConditionModel

        try:
            unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", use_safetensors=True)
        except (OSError, ValueError, EnvironmentError) as error:
            raise ModelFolderError(
                f"{path}/unet could not be loaded from safetensors ({str(error).splitlines()[0]}); re-save the pipeline"
            ) from None
        scheduler_config = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
        return ModelFolder(unet.to(device).eval(), scheduler_config, manifest, path, layout)
    config = json.loads((path / "unet" / "config.json").read_text())
    unet = UNet2DModel.from_config(config)
    try:
        state = load_file(str(path / "unet" / WEIGHTS), device=device)
    except Exception as error:  # safetensors raises its own types for truncated or foreign files
        raise ModelFolderError(
            f"{path / 'unet' / WEIGHTS} is not readable safetensors ({error}); re-save the model"
        ) from None
    missing, unexpected = unet.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelFolderError(
            f"{path}: weights do not match unet/config.json (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            f"re-save the model"
        )
    scheduler_config = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    return ModelFolder(unet.to(device).eval(), scheduler_config, manifest, path)


def weight_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype of a module's weights (bfloat16 under a bf16 DeepSpeed engine). Networks get their
    inputs in it and hand back the input's dtype, so losses and messages keep theirs whatever the precision."""
    return next(module.parameters()).dtype


class Denoiser:
    """A network plus its schedule, answering 'what is x0 at (x_t, t)?', with optional CFG."""

    def __init__(self, unet: torch.nn.Module, schedule: NoiseSchedule, conditioning: ClassLabels | PromptTable):
        self.unet, self.schedule, self.conditioning = unet, schedule, conditioning

    def output(
        self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None, guidance_scale: float = 1.0
    ) -> torch.Tensor:
        """The network output (B, C, H, W); guidance_scale != 1 runs conditional and null-label halves in one batch."""
        conditioning, dtype = self.conditioning, weight_dtype(self.unet)
        if guidance_scale == 1.0 or not conditioning.count:
            return self.unet(x_t.to(dtype), t, **conditioning.unet_kwargs(labels, dtype)).sample.to(x_t.dtype)
        null = torch.full_like(labels, conditioning.null_label)
        both = self.unet(
            torch.cat([x_t, x_t]).to(dtype),
            torch.cat([t, t]),
            **conditioning.unet_kwargs(torch.cat([labels, null]), dtype),
        ).sample.to(x_t.dtype)
        cond, uncond = both.chunk(2)
        return guided(uncond, cond, guidance_scale)

    def x0(
        self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None, guidance_scale: float = 1.0
    ) -> torch.Tensor:
        """x0 estimate (B, C, H, W) at (x_t, t)."""
        return self.schedule.to_x0(self.output(x_t, t, labels, guidance_scale), x_t, t)
