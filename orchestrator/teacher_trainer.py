"""Driver side of teacher training: check inputs, start (or continue) an MLflow run, run Ray Train's TorchTrainer.

A training stopped part-way resumes when the same command runs again: the Ray Train run is named
after the output folder, so Ray Train finds its checkpoints (OUTPUT.checkpoints/), and the MLflow
run id is kept beside them, so the metrics continue in the same run.
"""

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

from orchestrator.config import TeacherTrainingConfig
from orchestrator.config_loading import to_dict
from orchestrator.placement import connect
from orchestrator.setups import deepspeed_config
from orchestrator.tracking import redact, run_params, use_tracking_uri
from workers.data.shards import read_info
from workers.data.streams import ray_dataset
from workers.errors import ConfigError

TRAINING_RECORD = "training.json"
"""Written beside a finished teacher's weights: the recipe it was trained with, and how long it took."""
MLFLOW_RUN = "mlflow_run_id"


def checkpoint_folder(output: Path) -> Path:
    """Where a teacher's training checkpoints live: beside its model folder, which exists only once it is done."""
    return Path(output).resolve().with_name(Path(output).name + ".checkpoints")


def recipe(config: TeacherTrainingConfig) -> dict:
    """What decides the trained weights: the config without where it goes and how it is tracked."""
    return {
        k: v for k, v in to_dict(config).items() if k not in ("output", "tracking", "log_every", "checkpoint_every")
    }


def training_record(teacher: Path) -> dict | None:
    """What `train_teacher` wrote beside a teacher's weights (recipe, seconds), or None for a teacher from elsewhere."""
    path = Path(teacher) / TRAINING_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def train_teacher(config: TeacherTrainingConfig) -> Path:
    """Train (or finish training) and save the teacher's model folder; returns its path."""
    import mlflow
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from workers.diffusion.schedule import ddpm_scheduler_config
    from workers.training.teacher_loop import TeacherTrainingSetup, train_loop

    info = read_info(config.data)  # a missing or corrupt data set fails here, before any worker starts
    shape = (config.unet.channels, config.unet.sample_size, config.unet.sample_size)
    if info.image_shape != shape:
        raise ConfigError(
            f"unet: the data set {config.data} holds images of shape {list(info.image_shape)}, the unet "
            f"is configured for {list(shape)}; set unet.channels and unet.sample_size to match"
        )
    output = Path(config.output).resolve()
    checkpoints = checkpoint_folder(output)
    run_name = f"teacher-{hashlib.sha1(str(output).encode()).hexdigest()[:10]}"
    run_file = checkpoints / run_name / MLFLOW_RUN
    resumed_run = run_file.read_text().strip() if run_file.is_file() else None
    uri = use_tracking_uri(config.tracking.tracking_uri)
    mlflow.set_experiment(config.tracking.experiment)
    connect(config.num_workers * config.cpus_per_worker + 1)
    start = time.perf_counter()
    with mlflow.start_run(run_id=resumed_run, run_name=None if resumed_run else "teacher") as run:
        if resumed_run is None:
            mlflow.log_params(run_params(to_dict(config), uri))
            run_file.parent.mkdir(parents=True, exist_ok=True)
            run_file.write_text(run.info.run_id)
        action = "continuing" if resumed_run else "training"
        print(
            f"teacher: {action} on {info.num_rows} images {list(info.image_shape)}, {info.num_classes} classes; "
            f"MLflow run {run.info.run_id} at {redact(uri)}",
            flush=True,
        )
        setup = TeacherTrainingSetup(
            unet=asdict(config.unet),
            scheduler_config=ddpm_scheduler_config(**asdict(config.schedule)),
            deepspeed=deepspeed_config(config.optimizer, config.sharding, config.batch_size // config.num_workers),
            gradient_checkpointing=config.sharding.gradient_checkpointing,
            num_classes=info.num_classes,
            image_shape=info.image_shape,
            steps=config.steps,
            batch_size=config.batch_size,
            label_dropout=config.label_dropout,
            snr_gamma=config.snr_gamma if config.loss_weighting == "min_snr" else None,
            ema_decay=config.ema_decay,
            ema_warmup=config.ema_warmup,
            guidance_scale=config.guidance_scale,
            seed=config.seed,
            threads=config.threads_per_worker,
            log_every=config.log_every,
            checkpoint_every=config.checkpoint_every,
            output=str(output),
            run_id=run.info.run_id,
            tracking_uri=uri,
        )
        trainer = TorchTrainer(
            train_loop,
            train_loop_config=asdict(setup),
            scaling_config=ScalingConfig(
                num_workers=config.num_workers,
                use_gpu=config.use_gpu,
                resources_per_worker={"CPU": config.cpus_per_worker},
            ),
            datasets={
                "train": ray_dataset(config.data).materialize()
            },  # read once: epochs of a small set then cost nothing
            run_config=RunConfig(
                name=run_name, storage_path=str(checkpoints), checkpoint_config=CheckpointConfig(num_to_keep=2)
            ),
        )
        trainer.fit()
        seconds = time.perf_counter() - start
        # The recipe beside the weights: a job that finds this folder reuses it only for the same recipe.
        record = {"recipe": recipe(config), "seconds": seconds, "resumed": resumed_run is not None}
        (output / TRAINING_RECORD).write_text(json.dumps(record, indent=2))
        mlflow.log_metric("teacher/train_seconds", seconds)
        mlflow.log_artifacts(str(output), artifact_path="teacher")
    return output
