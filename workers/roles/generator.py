"""The generator role: the few-step student. It keeps x0's graph between `generate` and `update`."""

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from workers.diffusion.imagine_flash import srl_loss
from workers.diffusion.losses import dm_gradient, dm_loss, dm_timestep_range, sample_timesteps, surrogate_loss
from workers.diffusion.samplers import backward_simulate, timestep_batch
from workers.models.folders import Denoiser, load_model_folder
from workers.models.pipelines import LoraSetup
from workers.parallel.deepspeed import backward_and_step, full_state_dict, load_engine, save_engine, step_metrics, wrap
from workers.parallel.weight_average import WeightAverage
from workers.roles.base import RoleWorker
from workers.roles.messages import CriticFeedback, GeneratedBatch, GenerateRequest, TeacherAnswer, as_tensor


@dataclass
class GeneratorSetup:
    timesteps: list[int]  # the student's inference timesteps, high to low
    inputs: str  # backward_simulated or forward_noised (student.inputs)
    sampler: str  # lcm, ddim or noise_corrected_ddim (student.sampler)
    micro_batch: int  # this rank's batch per call
    dm_t_min: int  # DM loss timesteps, inclusive
    dm_t_max: int
    dm_below_input: bool  # later steps draw DM timesteps up to their own input's (dmd2.dm_timesteps)
    dm_weight: float
    gan_generator_weight: float
    srl_weight: float
    deepspeed: dict  # DeepSpeed's config: optimizer, ZeRO stage, precision
    gradient_checkpointing: bool = False
    init_from: str | None = None  # a student folder to start from instead of the teacher's weights
    prompts: str | None = None  # the prompt table of a text-to-image teacher (labels index its prompts)
    lora: LoraSetup | None = None  # train a LoRA on the student's UNet instead of all its weights
    ema_decay: float = 0.0  # > 0: the student is the EMA of the generator's weights (student.ema_decay)


class Generator(RoleWorker):
    role = "generator"

    def setup(self, teacher_dir: Path, setup: GeneratorSetup, real_data=None) -> None:
        """`real_data`: this rank's Ray Data iterator over real images (needed for forward-noised inputs)."""
        folder = load_model_folder(teacher_dir, self.device)  # the student starts as the teacher ...
        self.config, self.manifest, self.scheduler_config = setup, folder.manifest, folder.scheduler_config
        self.unet = folder.unet.train().requires_grad_(True)
        if setup.init_from:  # ... or as an earlier student of the same architecture
            self.unet.load_state_dict(load_model_folder(setup.init_from, self.device).unet.state_dict())
        if setup.lora:  # only the adapter's parameters train (peft freezes the rest)
            self.unet.add_adapter(setup.lora.peft_config())
        self.engine = wrap(self.unet, setup.deepspeed, setup.gradient_checkpointing)
        self.average = WeightAverage(self.unet, setup.ema_decay) if setup.ema_decay > 0 else None
        self.conditioning = folder.conditioning(setup.prompts, self.device)
        self.denoiser = Denoiser(self.engine, folder.schedule, self.conditioning)
        self.shape = (self.unet.config.in_channels, self.unet.config.sample_size, self.unet.config.sample_size)
        self.pending: torch.Tensor | None = None  # x0 with its graph, awaiting `update`
        if setup.inputs == "forward_noised":
            self.open_real_batches(real_data, setup.micro_batch, self.shape)

    def _inputs(self, k: int, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The student's input at its step k (b, C, H, W), without graph, and its labels (b,) or None."""
        b, ts, schedule = self.config.micro_batch, self.config.timesteps, self.denoiser.schedule
        noise = torch.randn((b, *self.shape), generator=rng)
        if self.real_batches is not None:  # the ablation: real images forward-noised to t_k
            images, labels = self.next_real_batch()
            labels = None if labels is None else as_tensor(labels)
            return schedule.add_noise(as_tensor(images), noise, timestep_batch(ts[k], noise)), labels
        count = self.conditioning.count  # classes, or prompts from the data set's captions
        labels = torch.randint(0, count, (b,), generator=rng) if count else None
        x0_fn = lambda x_t, t: self.denoiser.x0(x_t, t, labels)  # noqa: E731
        return backward_simulate(x0_fn, schedule, noise, ts, k, rng, self.config.sampler), labels

    def generate(self, request: GenerateRequest) -> GeneratedBatch | tuple[GeneratedBatch, ...]:
        """Fresh samples from noise at the student's step `student_step`, split into `shards` messages."""
        with self.timed("generate", images=self.config.micro_batch):
            rng = self.rng(request.key)
            k, schedule = request.student_step, self.denoiser.schedule
            x_in, labels = self._inputs(k, rng)  # (b, C, H, W), no graph
            student_t = timestep_batch(self.config.timesteps[k], x_in)
            with torch.set_grad_enabled(request.keep_graph):
                x0 = self.denoiser.x0(x_in, student_t, labels)
            if request.keep_graph:
                self.pending = x0
            c = self.config
            t = sample_timesteps(
                x0.shape[0], *dm_timestep_range(c.dm_t_min, c.dm_t_max, c.timesteps, k, c.dm_below_input), rng
            )
            x_t = schedule.add_noise(x0.detach(), torch.randn(x0.shape, generator=rng), t)
            batch = GeneratedBatch(
                x0.detach().numpy(),
                x_t.numpy(),
                t.numpy(),
                None if labels is None else labels.numpy(),
                student_t.numpy(),
                request.key,
            )
            shards = split_batch(batch, request.shards)
            return shards[0] if len(shards) == 1 else tuple(shards)

    def update(self, shards: int, *answers) -> dict[str, float]:
        """Back-propagate the DM, SRL and GAN losses through the kept graph and step.

        `answers`: the teacher's TeacherAnswer per shard, then the critic's CriticFeedback per shard.
        """
        with self.timed("update", images=0 if self.pending is None else len(self.pending), received=answers):
            teacher: list[TeacherAnswer] = list(answers[:shards])
            feedback: list[CriticFeedback] = list(answers[shards:])
            x0_fake, self.pending = self.pending, None
            if x0_fake is None:
                raise RuntimeError("update called without a generate(keep_graph=True) before it")
            c, loss, metrics = self.config, 0.0, {}
            if c.dm_weight > 0:
                x0_real = as_tensor(np.concatenate([a.x0 for a in teacher]))
                x0_critic = as_tensor(np.concatenate([f.x0 for f in feedback]))
                loss_dm = dm_loss(x0_fake, dm_gradient(x0_fake, x0_real, x0_critic))
                loss, metrics["generator/dm_loss"] = loss + c.dm_weight * loss_dm, loss_dm.item()
            if c.srl_weight > 0:
                loss_srl = srl_loss(x0_fake, as_tensor(np.concatenate([a.srl_target for a in teacher])))
                loss, metrics["generator/srl_loss"] = loss + c.srl_weight * loss_srl, loss_srl.item()
            if c.gan_generator_weight > 0:
                gan_grad = as_tensor(np.concatenate([f.gan_grad for f in feedback]))
                # The critic sent d(sum of per-sample losses)/dx0; divide by b for the mean.
                loss = loss + c.gan_generator_weight * surrogate_loss(x0_fake, gan_grad) / x0_fake.shape[0]
                metrics["generator/gan_loss"] = float(np.mean([f.gan_loss for f in feedback]))
            stepped = backward_and_step(self.engine, loss)
            if stepped and self.average is not None:
                self.average.update()
            sample = x0_fake.detach()
            return (
                step_metrics(self.engine, self.role, stepped)
                | metrics
                | {
                    "generator/sample_mean": sample.mean().item(),
                    "generator/sample_std": sample.std().item(),
                    "generator/lr": self.engine.get_lr()[0],
                }
            )

    def state(self) -> dict[str, torch.Tensor] | None:
        """Student weights (their EMA when kept) from rank 0, None from the others: all of them, or a
        LoRA's only. Call every rank: ZeRO-3 gathers."""
        with self.average.swapped_in() if self.average is not None else nullcontext():
            weights = full_state_dict(self.unet)
        if self.config.lora:
            weights = {k: v for k, v in weights.items() if "lora_" in k}
        return weights if self.rank == 0 else None

    def save(self, directory: Path) -> None:
        save_engine(self.engine, self.unet, Path(directory), self.rank, {"real_batches_taken": self.real_batches_taken})
        if self.average is not None:
            self.average.save(Path(directory) / f"ema-rank{self.rank}.safetensors")

    def load(self, directory: Path) -> None:
        """Restore weights and optimizer, and fast-forward the real-data stream (right after setup)."""
        extra = load_engine(self.engine, self.unet, Path(directory), self.rank)
        if self.average is not None:
            self.average.load(Path(directory) / f"ema-rank{self.rank}.safetensors")
        self.restart_real_batches(int(extra.get("real_batches_taken", 0)))


def split_batch(batch: GeneratedBatch, shards: int) -> list[GeneratedBatch]:
    """Split along the batch axis into `shards` equal messages."""
    arrays = (batch.x0, batch.x_t, batch.t, batch.labels, batch.student_t)
    parts = [np.array_split(a, shards) if a is not None else [None] * shards for a in arrays]
    return [GeneratedBatch(*(p[i] for p in parts), key=(*batch.key, i)) for i in range(shards)]
