"""Driver side of teacher training: check inputs, start an MLflow run, run Ray Train's TorchTrainer."""

import time
from pathlib import Path

from orchestrator.config import TeacherTrainingConfig
from orchestrator.config_loading import to_dict
from orchestrator.role_group import connect
from orchestrator.tracking import redact, run_params, use_tracking_uri
from workers.data import ray_dataset, read_info
from workers.errors import ConfigError


def train_teacher(config: TeacherTrainingConfig) -> Path:
    """Train and save the teacher's model folder; returns its path."""
    import mlflow
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from workers.teacher_training import train_loop

    info = read_info(config.data)  # a missing or corrupt data set fails here, before any worker starts
    if info.image_shape != (config.unet.channels, config.unet.sample_size, config.unet.sample_size):
        raise ConfigError(
            f"unet: the data set {config.data} holds images of shape {list(info.image_shape)}, the unet is configured for "
            f"{[config.unet.channels, config.unet.sample_size, config.unet.sample_size]}; set unet.channels and unet.sample_size to match"
        )
    config.output = config.output.resolve()
    uri = use_tracking_uri(config.tracking.tracking_uri)
    mlflow.set_experiment(config.tracking.experiment)
    connect(config.num_workers * config.cpus_per_worker + 1)
    start = time.perf_counter()
    with mlflow.start_run(run_name="teacher") as run:
        mlflow.log_params(run_params(to_dict(config), uri))
        print(f"teacher: {info.num_rows} images {list(info.image_shape)}, {info.num_classes} classes; MLflow run {run.info.run_id} at {redact(uri)}", flush=True)
        payload = {"config": to_dict(config), "num_classes": info.num_classes, "image_shape": list(info.image_shape), "run_id": run.info.run_id, "tracking_uri": uri}
        trainer = TorchTrainer(
            train_loop,
            train_loop_config=payload,
            scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu, resources_per_worker={"CPU": config.cpus_per_worker}),
            datasets={"train": ray_dataset(config.data).materialize()},  # read once: epochs of a small set then cost nothing
            run_config=RunConfig(name=f"teacher-{run.info.run_id[:8]}", storage_path=str(Path("runs/ray_train").resolve())),
        )
        trainer.fit()
        mlflow.log_metric("teacher/train_seconds", time.perf_counter() - start)
        mlflow.log_artifacts(str(config.output), artifact_path="teacher")
    return config.output
