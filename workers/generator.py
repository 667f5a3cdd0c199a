"""The generator role: the few-step student. It keeps x0's graph between `generate` and `update`."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from workers.deepspeed_setup import OptimizerConfig, ShardingConfig, backward_and_step, load_engine, save_engine, step_metrics, wrap
from workers.losses import dm_gradient, dm_loss, sample_timesteps, surrogate_loss
from workers.messages import CriticFeedback, GeneratedBatch, GenerateRequest, as_tensor
from workers.models import Denoiser, load_model_folder
from workers.role import RoleWorker
from workers.sampling import backward_simulate, timestep_batch


@dataclass
class GeneratorSetup:
    timesteps: list[int]  # the student's inference timesteps, high to low
    micro_batch: int  # this rank's batch per call
    dm_t_min: int  # DM loss timesteps, inclusive
    dm_t_max: int
    dm_weight: float
    gan_weight: float
    optimizer: OptimizerConfig
    sharding: ShardingConfig
    init_from: str | None = None  # a student folder to start from instead of the teacher's weights


class Generator(RoleWorker):
    role = "generator"

    def setup(self, teacher_dir: Path, setup: GeneratorSetup) -> None:
        folder = load_model_folder(teacher_dir, self.device)  # the student starts as the teacher ...
        self.config, self.manifest, self.scheduler_config = setup, folder.manifest, folder.scheduler_config
        self.unet = folder.unet.train().requires_grad_(True)
        if setup.init_from:  # ... or as an earlier student of the same architecture
            self.unet.load_state_dict(load_model_folder(setup.init_from, self.device).unet.state_dict())
        self.engine = wrap(self.unet, setup.optimizer, setup.sharding, setup.micro_batch)
        self.denoiser = Denoiser(self.engine, folder.schedule, folder.manifest.num_classes)
        self.shape = (self.unet.config.in_channels, self.unet.config.sample_size, self.unet.config.sample_size)
        self.pending: torch.Tensor | None = None  # x0 with its graph, awaiting `update`

    def generate(self, request: GenerateRequest) -> GeneratedBatch | tuple[GeneratedBatch, ...]:
        """Fresh samples from noise at the student's timestep `backward_steps`, split into `shards` messages."""
        with self.timed("generate"):
            rng = self.generator_for(request.seed)
            b, ts, schedule = self.config.micro_batch, self.config.timesteps, self.denoiser.schedule
            labels = torch.randint(0, self.manifest.num_classes, (b,), generator=rng) if self.manifest.num_classes else None
            noise = torch.randn((b, *self.shape), generator=rng)
            x0_fn = lambda x_t, t: self.denoiser.x0(x_t, t, labels)  # noqa: E731
            x_in = backward_simulate(x0_fn, schedule, noise, ts, request.backward_steps, rng)  # (b, C, H, W), no graph
            with torch.set_grad_enabled(request.keep_graph):
                x0 = x0_fn(x_in, timestep_batch(ts[request.backward_steps], x_in))
            if request.keep_graph:
                self.pending = x0
            t = sample_timesteps(b, self.config.dm_t_min, self.config.dm_t_max, rng)
            x_t = schedule.add_noise(x0.detach(), torch.randn(x0.shape, generator=rng), t)
            batch = GeneratedBatch(x0.detach().numpy(), x_t.numpy(), t.numpy(), None if labels is None else labels.numpy())
            shards = split_batch(batch, request.shards)
            return shards[0] if len(shards) == 1 else tuple(shards)

    def update(self, shards: int, *answers) -> dict[str, float]:
        """Back-propagate the DM and GAN losses through the kept graph and step.

        `answers`: the teacher's x0 per shard, then the critic's CriticFeedback per shard.
        """
        with self.timed("update"):
            x0_real = as_tensor(np.concatenate(answers[:shards]))
            feedback: list[CriticFeedback] = list(answers[shards:])
            x0_critic = as_tensor(np.concatenate([f.x0 for f in feedback]))
            x0_fake, self.pending = self.pending, None
            if x0_fake is None:
                raise RuntimeError("update called without a generate(keep_graph=True) before it")
            gradient = dm_gradient(x0_fake, x0_real, x0_critic)
            loss_dm = dm_loss(x0_fake, gradient)
            loss = self.config.dm_weight * loss_dm
            gan_loss = float(np.mean([f.gan_loss for f in feedback]))
            if self.config.gan_weight > 0:
                gan_grad = as_tensor(np.concatenate([f.gan_grad for f in feedback]))
                # The critic sent d(sum of per-sample losses)/dx0; divide by b for the mean.
                loss = loss + self.config.gan_weight * surrogate_loss(x0_fake, gan_grad) / x0_fake.shape[0]
            stepped = backward_and_step(self.engine, loss)
            sample = x0_fake.detach()
            return step_metrics(self.engine, self.role, stepped) | {
                "generator/dm_loss": loss_dm.item(),
                "generator/gan_loss": gan_loss,
                "generator/sample_mean": sample.mean().item(),
                "generator/sample_std": sample.std().item(),
                "generator/lr": self.engine.get_lr()[0],
            }

    def state(self) -> dict[str, torch.Tensor]:
        """Full student weights (rank 0 of ZeRO stage 0-2 holds them all)."""
        return {k: v.detach().cpu().clone() for k, v in self.unet.state_dict().items()}

    def save(self, directory: Path) -> None:
        save_engine(self.engine, self.unet, Path(directory), self.rank)

    def load(self, directory: Path) -> None:
        load_engine(self.engine, self.unet, Path(directory), self.rank)


def split_batch(batch: GeneratedBatch, shards: int) -> list[GeneratedBatch]:
    """Split along the batch axis into `shards` equal messages."""
    parts = [np.array_split(a, shards) if a is not None else [None] * shards for a in (batch.x0, batch.x_t, batch.t, batch.labels)]
    return [GeneratedBatch(*(p[i] for p in parts)) for i in range(shards)]
