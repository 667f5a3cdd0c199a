"""The per-worker loop of teacher training (runs inside Ray Train's TorchTrainer workers).

Ordinary denoising diffusion training: x_t = alpha_t x0 + sigma_t eps with t ~ U{0..T-1}, the
network regresses its prediction type's target, labels dropped to the null label with
probability `label_dropout` so the teacher also knows the unconditional score for CFG.
"""

import time

import numpy as np
import torch

from orchestrator.config import TeacherTrainingConfig
from orchestrator.config_loading import from_dict
from workers.data import batch_to_arrays
from workers.losses import denoising_loss
from workers.models import ModelManifest, build_unet, save_model_folder
from workers.schedule import NoiseSchedule
from workers.weight_average import WeightAverage


def drop_labels(labels: torch.Tensor, null_label: int, probability: float, generator: torch.Generator) -> torch.Tensor:
    """Replace each label by the null label with the given probability."""
    drop = torch.rand(labels.shape, generator=generator) < probability
    return torch.where(drop, torch.full_like(labels, null_label), labels)


def train_loop(payload: dict) -> None:
    """Ray Train entry point. `payload`: the config as a dict, plus `num_classes`, `image_shape`, `run_id`, `tracking_uri`."""
    import ray.train

    from orchestrator.tracking import MetricLogger
    from workers.deepspeed_setup import wrap

    config = from_dict(TeacherTrainingConfig, payload["config"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(config.seed + rank)
    torch.set_num_threads(config.threads_per_worker)
    generator = torch.Generator().manual_seed(config.seed * 1000 + rank)
    num_classes, shape = payload["num_classes"], tuple(payload["image_shape"])

    unet = build_unet(config.unet, num_classes)
    schedule = NoiseSchedule.from_scheduler_config(config.schedule.scheduler_config())
    micro_batch = config.batch_size // world
    engine = wrap(unet, config.optimizer, config.sharding, micro_batch)
    ema = WeightAverage(unet, config.ema_decay)  # the saved teacher
    logger = MetricLogger(payload["run_id"], payload["tracking_uri"]) if rank == 0 else None

    shard = ray.train.get_dataset_shard("train")
    step, epoch, start, losses = 0, 0, time.perf_counter(), []
    while step < config.steps:
        # The local shuffle takes a seed per (run seed, rank, epoch): unseeded, it made two runs of one
        # config train different teachers.
        shuffle_seed = hash((config.seed, rank, epoch)) % 2**32
        epoch += 1
        for batch in shard.iter_batches(batch_size=micro_batch, batch_format="numpy", drop_last=True, local_shuffle_buffer_size=4 * micro_batch, local_shuffle_seed=shuffle_seed):
            images, labels = batch_to_arrays(batch, shape)
            x0 = torch.from_numpy(images).to(engine.device)  # (B, C, H, W)
            y = None if labels is None else drop_labels(torch.from_numpy(labels), num_classes, config.label_dropout, generator).to(engine.device)
            eps = torch.randn(x0.shape, generator=generator).to(engine.device)
            t = torch.randint(0, schedule.num_train_timesteps, (x0.shape[0],), generator=generator).to(engine.device)
            output = engine(schedule.add_noise(x0, eps, t), t, class_labels=y).sample
            loss = denoising_loss(output, schedule, x0, eps, t)
            engine.backward(loss)
            engine.step()
            ema.update()
            step += 1
            losses.append(loss.item())
            if step % config.log_every == 0 or step == config.steps:
                report_progress(logger, step, config.steps, start, float(np.mean(losses)), engine.get_lr()[0], micro_batch * world)
                losses = []
            if step == config.steps:
                break

    if rank == 0:
        manifest = ModelManifest(kind="teacher", num_classes=num_classes, guidance_scale=config.guidance_scale, method="ddpm")
        with ema.swapped_in():
            save_model_folder(config.output, unet, config.schedule.scheduler_config(), manifest)
        logger.flush()
    ray.train.report({"steps": step, "seconds": time.perf_counter() - start})


def report_progress(logger, step: int, steps: int, start: float, loss: float, lr: float, batch: int) -> None:
    """One status line (step, rate, ETA, loss) and the metrics, from rank 0 only."""
    if logger is None:
        return
    elapsed = time.perf_counter() - start
    rate = step / elapsed
    print(f"teacher step {step}/{steps}  loss {loss:.4f}  {rate:.1f} steps/s  {rate * batch:.0f} img/s  eta {(steps - step) / rate:.0f}s", flush=True)
    logger.log({"teacher/loss": loss, "teacher/lr": lr, "teacher/steps_per_second": rate}, step)
