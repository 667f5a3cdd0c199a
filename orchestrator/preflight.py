"""Everything checked before an actor starts: placement, the teacher and data, the resume point.

`preflight` runs the same checks for `jobs.distill --dry-run` and for a real run, so a dry run
shows every error a real run would stop on before doing expensive work; `plan` says what the run
would then do, in the order it would do it.
"""

import json
from pathlib import Path

from orchestrator.config import DistillConfig, TeacherTrainingConfig
from orchestrator.config_loading import load_config
from orchestrator.placement import ROLES, bundle, check_placement
from workers.diffusion.noise_correction import MIN_ALPHA  # below it an epsilon x0 estimate amplifies errors over 1000x
from workers.errors import ConfigError, UserError
from workers.models.conditioning import PROMPT_TABLE, PromptTable
from workers.models.folders import layout_of

BUNDLED_DATA = DistillConfig().data
"""The one data path written on first use (with scikit-learn's bundled digits); any other must exist."""


def preflight(config: DistillConfig, nodes: list[dict[str, float]], may_grow: bool) -> Path | None:
    """Every check that needs no actor: placement, teacher and data, resume. Returns the checkpoint to resume from.

    A teacher that does not exist yet but has a recipe is checked after it is made; its recipe and data now.
    """
    check_placement(config.roles, nodes, may_grow)
    if Path(config.teacher).exists() or config.teacher_recipe is None:
        check_inputs(config)
    else:
        teacher_recipe(config)
        if not writes_bundled_data(config):
            check_data_exists(config.data, "a teacher recipe's data")
    return resume_point(config, Path(config.output).resolve() / "checkpoints")


def writes_bundled_data(config: DistillConfig) -> bool:
    """Whether the run writes the bundled digits to `data` first: only at the default path, only when missing."""
    return not Path(config.data).exists() and Path(config.data).resolve() == BUNDLED_DATA.resolve()


def check_data_exists(data: Path, what: str, latents_for: Path | None = None) -> None:
    """A missing data folder is an error that names the command that makes it, never silently filled."""
    if Path(data).exists():
        return
    make = (
        f"python -m jobs.encode_latents --teacher {latents_for} --out {data}"
        if latents_for
        else f"python -m jobs.prepare_data --out {data}"
    )
    raise ConfigError(f"data: data set folder {data} does not exist ({what}): create it with `{make}` or fix the path")


def teacher_recipe(config: DistillConfig) -> TeacherTrainingConfig:
    """The teacher-training config that makes `config.teacher` on first use."""
    return load_config(
        TeacherTrainingConfig, config.teacher_recipe, [f"output={config.teacher}", f"data={config.data}"]
    )


def plan(config: DistillConfig, resume_from: Path | None, nodes: list[dict[str, float]], where: str) -> list[str]:
    """What the run will do, in order, once `preflight` passed: one line each (the dry run prints them)."""
    from workers.data.shards import read_info

    lines = []
    if writes_bundled_data(config):
        lines.append(f"data: write scikit-learn's bundled digits to {config.data} (it does not exist yet)")
    else:
        info = read_info(config.data) if Path(config.data).is_dir() else None
        shape = (
            "" if info is None else f" ({info.num_rows} images {list(info.image_shape)}, {info.num_classes} classes)"
        )
        lines.append(f"data: read {config.data}{shape}")
    if Path(config.teacher).exists():
        lines.append(f"teacher: load {config.teacher}")
    else:
        recipe = teacher_recipe(config)
        lines.append(
            f"teacher: train {config.teacher} first, from {config.teacher_recipe} ({recipe.steps} steps at "
            f"batch {recipe.batch_size}, {recipe.num_workers} Ray Train worker(s))"
        )
    for name in ROLES:
        role = getattr(config.roles, name)
        lines.append(
            f"placement: {name}: {role.ranks} rank(s) of {bundle(role)}, ZeRO stage {role.sharding.zero_stage}"
        )
    lines.append(f"placement: on {where} ({len(nodes)} node(s))")
    steps = config.generator_steps
    if resume_from is None:
        lines.append(
            f"schedule: {steps} generator steps from the start, checkpoints in {Path(config.output) / 'checkpoints'}"
        )
        lines.append(f"mlflow: a new run in experiment {config.tracking.experiment!r}")
    else:
        from orchestrator.checkpoint import read_progress

        progress = read_progress(resume_from)
        lines.append(f"schedule: resume from {resume_from} at generator step {progress.generator_steps} of {steps}")
        lines.append(f"mlflow: continue run {progress.mlflow_run_id} in experiment {config.tracking.experiment!r}")
    return lines


def resume_point(config: DistillConfig, checkpoints: Path) -> Path | None:
    """The checkpoint to start from, per config.resume; refuses to mix a fresh run into old checkpoints."""
    from orchestrator.checkpoint import latest_checkpoint, verify_checkpoint

    if config.resume == "never":
        old = sorted(checkpoints.glob("step-*"))
        if old:
            raise ConfigError(
                f"resume: never, but {checkpoints} holds {old[-1].name}; use a new --output, or resume: auto to "
                f"continue it"
            )
        return None
    try:
        path = latest_checkpoint(checkpoints) if config.resume == "auto" else verify_checkpoint(Path(config.resume))
    except UserError as error:
        raise ConfigError(f"resume: {error}") from None
    for role in ("critic", "generator"):  # optimizer state is per rank: the world sizes must match
        saved, ranks = (
            len(list((path / role).glob("optimizer-rank*.json"))) if path else 0,
            getattr(config.roles, role).ranks,
        )
        if path and saved != ranks:
            raise ConfigError(
                f"roles.{role}.ranks: {ranks}, but checkpoint {path} was written by {saved} {role} rank(s); "
                f"set roles.{role}.ranks={saved} to resume it, or start fresh with a new --output"
            )
    return path


def check_inputs(config: DistillConfig):
    """Everything that can be checked before an actor starts: teacher folder, data, their agreement."""
    from workers.data.shards import read_info
    from workers.diffusion.schedule import NoiseSchedule
    from workers.models.folders import check_model_folder

    try:
        manifest = check_model_folder(config.teacher)
    except UserError as error:
        raise ConfigError(f"teacher: {error}") from None
    if manifest.kind != "teacher":
        raise ConfigError(
            f"teacher: {config.teacher} holds a {manifest.kind}, not a teacher; point at a folder written by "
            f"jobs.train_teacher"
        )
    layout = layout_of(config.teacher)
    if needs_real_data(config) or layout != "pixels":
        check_data_exists(
            config.data, "the real images the run trains on", config.teacher if layout != "pixels" else None
        )
    try:
        info = read_info(config.data) if needs_real_data(config) or layout != "pixels" else None
    except UserError as error:
        raise ConfigError(f"data: {error}") from None
    unet_config = json.loads((Path(config.teacher) / "unet" / "config.json").read_text())
    check_layout(config, layout, info, unet_config)
    shape = (unet_config["in_channels"], unet_config["sample_size"], unet_config["sample_size"])
    if info is not None and info.image_shape != shape:
        raise ConfigError(
            f"data: {config.data} holds images of shape {list(info.image_shape)}, the teacher makes {list(shape)}; "
            f"use the teacher's data set"
        )
    if config.generator_init is not None:
        if not Path(config.generator_init).exists():
            raise ConfigError(
                f"generator_init: {config.generator_init} does not exist; point at a DIR/student folder written by "
                f"jobs.distill, or leave it unset"
            )
        try:
            start = check_model_folder(config.generator_init)
        except UserError as error:
            raise ConfigError(f"generator_init: {error}") from None
        architecture = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731  (not the versions)
        same = architecture(
            json.loads((Path(config.generator_init) / "unet" / "config.json").read_text())
        ) == architecture(unet_config)
        if start.kind != "student" or not same:
            raise ConfigError(
                f"generator_init: {config.generator_init} is not a student of this teacher's architecture; point at "
                f"a DIR/student folder distilled from it"
            )
    schedule = NoiseSchedule.from_scheduler_config(
        json.loads((Path(config.teacher) / "scheduler" / "scheduler_config.json").read_text())
    )
    timesteps = config.student.timesteps
    first = max(timesteps)
    if first >= schedule.num_train_timesteps:
        raise ConfigError(
            f"student.timesteps: {timesteps} must be below the teacher's "
            f"num_train_timesteps={schedule.num_train_timesteps}"
        )
    alpha = float(schedule.alphas_cumprod[first].sqrt())
    if schedule.prediction_type == "epsilon" and alpha < MIN_ALPHA:
        raise ConfigError(
            f"student.timesteps: the teacher's schedule has alpha={alpha:.2g} at t={first} (zero terminal SNR?), so "
            f"its x0 = (x_t - sigma eps) / alpha "
            f"amplifies errors {1 / alpha:.0f}x; start at a lower timestep or use a v-prediction teacher"
        )
    if config.student.sampler == "noise_corrected_ddim" and alpha < MIN_ALPHA:
        raise ConfigError(
            f"student.sampler: noise correction needs signal at the first timestep, and the teacher's schedule has "
            f"alpha={alpha:.2g} at t={first} "
            "(zero terminal SNR); use sampler ddim or start at a lower timestep"
        )
    return manifest, info


def check_layout(config: DistillConfig, layout: str, info, unet_config: dict) -> None:
    """A text-to-image teacher trains on latents with prompts and exports a diffusers pipeline; a pixel one, images."""
    encode = f"encode it with `python -m jobs.encode_latents --teacher {config.teacher} --out DIR` and set data: DIR"
    if layout == "pixels":
        if info is not None and info.space != "pixels":
            raise ConfigError(
                f"data: {config.data} holds latents, and {config.teacher} is a pixel-space teacher; use its image "
                f"data set"
            )
        if config.student.lora_rank:
            raise ConfigError(
                f"student.lora_rank: {config.student.lora_rank}, but LoRA export targets SD 1.5 / SDXL pipelines "
                f"and {config.teacher} is a pixel-space teacher; set it to 0"
            )
        return
    if info.space != "latents":
        raise ConfigError(
            f"data: {config.data} holds images, and the {layout} teacher {config.teacher} trains on latents: {encode}"
        )
    if not (Path(config.data) / PROMPT_TABLE).is_file():
        raise ConfigError(f"data: {config.data} has no {PROMPT_TABLE} (the prompts' text embeddings): {encode}")
    width, expected = (
        PromptTable(Path(config.data) / PROMPT_TABLE).embedding_shape[1],
        unet_config["cross_attention_dim"],
    )
    if width != expected:
        raise ConfigError(
            f"data: the prompt table in {config.data} holds text embeddings {width} wide, and {config.teacher}'s "
            f"UNet attends to {expected}: "
            f"it was encoded for another teacher; {encode}"
        )
    if config.student.sampler != "lcm":
        raise ConfigError(
            f"student.sampler: {config.student.sampler}, but the exported {layout} pipeline samples with diffusers' "
            f"LCMScheduler; use lcm"
        )


def needs_real_data(config: DistillConfig) -> bool:
    """The GAN's real side, or a student trained on forward-noised real images."""
    return config.dmd2.gan_generator_weight > 0 or config.student.inputs == "forward_noised"


def ensure_inputs(config: DistillConfig) -> bool:
    """Write the bundled digits to the default data path and make the teacher from its recipe, when they are
    missing (the tiny smoke config does both); True if the teacher was made."""
    if writes_bundled_data(config):
        from workers.data.shards import write_shards
        from workers.data.sources import digits_arrays

        print(f"data {config.data} does not exist yet: writing the bundled digits there", flush=True)
        write_shards(digits_arrays(), config.data)
    if Path(config.teacher).exists() or config.teacher_recipe is None:
        return False
    from orchestrator.teacher_trainer import train_teacher

    print(f"teacher {config.teacher} does not exist yet: training it from {config.teacher_recipe}", flush=True)
    train_teacher(teacher_recipe(config))
    return True
