"""The per-worker loop of teacher training (runs inside Ray Train's TorchTrainer workers).

Ordinary denoising diffusion training: x_t = alpha_t x0 + sigma_t eps with t ~ U{0..T-1}, the
network regresses its prediction type's target, labels dropped to the null label with
probability `label_dropout` so the teacher also knows the unconditional score for CFG.

Every `checkpoint_every` steps each rank reports a Ray Train checkpoint (weights, optimizer,
EMA, its noise generator and where it is in the data); a rerun of the same training (same run
name and storage path) gets the latest one from `ray.train.get_checkpoint()` and continues as if
never stopped.
"""

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from workers.data.streams import batch_to_arrays
from workers.diffusion.losses import denoising_loss, min_snr_weights
from workers.diffusion.schedule import NoiseSchedule
from workers.models.folders import ModelManifest, build_unet, save_model_folder
from workers.parallel.weight_average import WeightAverage

PROGRESS = "teacher_progress.json"


@dataclass
class TeacherTrainingSetup:
    """What each teacher-training worker is told (the orchestrator builds it from the teacher config)."""

    unet: dict  # build_unet's keyword arguments
    scheduler_config: dict  # the teacher's diffusers DDPMScheduler config
    deepspeed: dict  # DeepSpeed's config: optimizer, warm-up, ZeRO stage
    gradient_checkpointing: bool
    num_classes: int
    image_shape: tuple[int, int, int]
    steps: int
    batch_size: int  # global
    label_dropout: float
    snr_gamma: float | None  # Min-SNR-gamma loss weights; None: uniform
    ema_decay: float
    ema_warmup: bool
    guidance_scale: float  # saved in the manifest: what the teacher samples with by default
    seed: int
    threads: int
    log_every: int
    checkpoint_every: int
    output: str
    run_id: str  # the MLflow run the metrics go to
    tracking_uri: str


def drop_labels(labels: torch.Tensor, null_label: int, probability: float, generator: torch.Generator) -> torch.Tensor:
    """Replace each label by the null label with the given probability."""
    drop = torch.rand(labels.shape, generator=generator) < probability
    return torch.where(drop, torch.full_like(labels, null_label), labels)


def train_loop(payload: dict) -> None:
    """Ray Train entry point; `payload` is a TeacherTrainingSetup as a dict."""
    import ray.train

    from workers.metric_logger import MetricLogger
    from workers.parallel.deepspeed import wrap

    setup = TeacherTrainingSetup(**payload)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(setup.seed + rank)
    torch.set_num_threads(setup.threads)
    generator = torch.Generator().manual_seed(setup.seed * 1000 + rank)
    num_classes = setup.num_classes

    unet = build_unet(num_classes, **setup.unet)
    schedule = NoiseSchedule.from_scheduler_config(setup.scheduler_config)
    micro_batch = setup.batch_size // world
    engine = wrap(unet, setup.deepspeed, setup.gradient_checkpointing)
    ema = WeightAverage(unet, setup.ema_decay, setup.ema_warmup)  # the saved teacher
    logger = MetricLogger(setup.run_id, setup.tracking_uri) if rank == 0 else None
    step, epoch, batch_in_epoch = resume(engine, unet, ema, generator, rank)

    shard = ray.train.get_dataset_shard("train")
    start, losses, first = time.perf_counter(), [], step
    while step < setup.steps:
        # The local shuffle takes a seed per (run seed, rank, epoch): unseeded, it made two runs of one
        # config train different teachers.
        shuffle_seed = hash((setup.seed, rank, epoch)) % 2**32
        batches = shard.iter_batches(
            batch_size=micro_batch,
            batch_format="numpy",
            drop_last=True,
            local_shuffle_buffer_size=4 * micro_batch,
            local_shuffle_seed=shuffle_seed,
        )
        for index, batch in enumerate(batches):
            if index < batch_in_epoch:  # a resumed run skips what it already trained on
                continue
            images, labels = batch_to_arrays(batch, setup.image_shape)
            x0 = torch.from_numpy(images).to(engine.device)  # (B, C, H, W)
            y = None
            if labels is not None:
                y = drop_labels(torch.tensor(labels), num_classes, setup.label_dropout, generator).to(engine.device)
            eps = torch.randn(x0.shape, generator=generator).to(engine.device)
            t = torch.randint(0, schedule.num_train_timesteps, (x0.shape[0],), generator=generator).to(engine.device)
            output = engine(schedule.add_noise(x0, eps, t), t, class_labels=y).sample
            weights = None if setup.snr_gamma is None else min_snr_weights(schedule, t, setup.snr_gamma)
            loss = denoising_loss(output, schedule, x0, eps, t, weights)
            engine.backward(loss)
            engine.step()
            ema.update()
            step, batch_in_epoch = step + 1, index + 1
            losses.append(loss.item())
            if step % setup.log_every == 0 or step == setup.steps:
                report_progress(
                    logger,
                    step,
                    setup.steps,
                    step - first,
                    start,
                    float(np.mean(losses)),
                    engine.get_lr()[0],
                    micro_batch * world,
                )
                losses = []
            if setup.checkpoint_every and step % setup.checkpoint_every == 0 and step < setup.steps:
                save(
                    engine, unet, ema, generator, rank, {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch}
                )
            if step == setup.steps:
                break
        epoch, batch_in_epoch = epoch + 1, 0

    if rank == 0:
        manifest = ModelManifest(
            kind="teacher", num_classes=num_classes, guidance_scale=setup.guidance_scale, method="ddpm"
        )
        with ema.swapped_in():
            save_model_folder(Path(setup.output), unet, setup.scheduler_config, manifest)
        logger.flush()
    ray.train.report({"steps": step, "seconds": time.perf_counter() - start})


def save(engine, unet, ema: WeightAverage, generator: torch.Generator, rank: int, position: dict) -> None:
    """Report a Ray Train checkpoint of this rank: weights (rank 0), optimizer, EMA, noise generator, position."""
    import ray.train

    from workers.parallel.deepspeed import save_engine

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder)
        save_engine(engine, unet, path, rank, {"generator_state": generator.get_state()})
        ema.save(path / f"ema-rank{rank}.safetensors")
        (path / PROGRESS).write_text(json.dumps(position))
        ray.train.report({"step": position["step"]}, checkpoint=ray.train.Checkpoint.from_directory(folder))


def resume(engine, unet, ema: WeightAverage, generator: torch.Generator, rank: int) -> tuple[int, int, int]:
    """(step, epoch, batch in epoch) to continue from: the latest checkpoint's, loaded, or the start."""
    import ray.train

    from workers.parallel.deepspeed import load_engine

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, 0, 0
    with checkpoint.as_directory() as folder:
        path = Path(folder)
        extra = load_engine(engine, unet, path, rank)
        generator.set_state(extra["generator_state"])
        ema.load(path / f"ema-rank{rank}.safetensors")
        position = json.loads((path / PROGRESS).read_text())
    if rank == 0:
        print(f"teacher: resumed from step {position['step']}", flush=True)
    return position["step"], position["epoch"], position["batch_in_epoch"]


def report_progress(logger, step: int, steps: int, done: int, start: float, loss: float, lr: float, batch: int) -> None:
    """One status line (step, rate, ETA, loss) and the metrics, from rank 0 only."""
    if logger is None:
        return
    rate = done / (time.perf_counter() - start)
    print(
        f"teacher step {step}/{steps}  loss {loss:.4f}  {rate:.1f} steps/s  {rate * batch:.0f} img/s  "
        f"eta {(steps - step) / rate:.0f}s",
        flush=True,
    )
    logger.log({"teacher/loss": loss, "teacher/lr": lr, "teacher/steps_per_second": rate}, step)
