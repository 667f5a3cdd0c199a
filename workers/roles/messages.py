"""The small typed messages role actors pass to each other (as Ray object refs, never via the driver).

Arrays are numpy so Ray's object store hands them over without a copy.
"""

from dataclasses import dataclass

import numpy as np

Key = tuple[int, ...]
"""Names one update's random draws, e.g. (generator step, update in the cycle[, shard]); each role mixes in
the run seed, its name and its rank (`RoleWorker.rng`)."""


@dataclass
class GenerateRequest:
    key: Key  # keys this call's noise, labels and timesteps (same key, same batch)
    student_step: int  # k: the student step trained, after k steps of its sampler without gradient
    keep_graph: bool  # True for a generator update: the generator keeps x0's graph for `update`
    shards: int  # split the rank's batch into this many messages (one per consumer rank)


@dataclass
class GeneratedBatch:
    """One shard of generator output: its x0 and, for the DM loss, x0 re-noised to a random t."""

    x0: np.ndarray  # (b, C, H, W) float32, the generator's sample (detached)
    x_t: np.ndarray  # (b, C, H, W) float32, add_noise(x0, eps, t)
    t: np.ndarray  # (b,) int64, t ~ UniformInt[t_min, t_max]
    labels: np.ndarray | None  # (b,) int64 conditioning labels, or None
    student_t: np.ndarray  # (b,) int64, the student timestep x0 was predicted at (the SRL's t)
    key: Key  # keys the receivers' draws for this shard (same batch, same draws)


@dataclass
class TeacherAnswer:
    """The teacher's answer for one shard: the real score's x0 for the DM loss, the SRL target."""

    x0: np.ndarray | None  # (b, C, H, W) the teacher's x0 at (x_t, t), with CFG; None when the DM loss is off
    srl_target: (
        np.ndarray | None
    )  # (b, C, H, W) its x0 after re-noising x0 to gamma(student_t); None when the SRL is off


@dataclass
class CriticFeedback:
    """The critic's answer for one shard, computed without touching its own weights."""

    x0: (
        np.ndarray | None
    )  # (b, C, H, W) the critic's (fake score's) x0 estimate at (x_t, t); None when the DM loss is off
    gan_grad: np.ndarray | None  # (b, C, H, W) d(sum of generator GAN losses)/d x0, or None without GAN
    gan_loss: float  # mean generator GAN loss of the shard (0 without GAN)


def as_tensor(array: np.ndarray | None):
    """A torch tensor from a message array. Arrays from Ray's object store are read-only views
    (zero copy); torch wants writable memory, so those are copied (small, once per message)."""
    import torch

    if array is None:
        return None
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def message_bytes(*messages) -> int:
    """The bytes of the numpy arrays in some messages (what crossed between roles)."""
    return sum(value.nbytes for m in messages for value in vars(m).values() if isinstance(value, np.ndarray))
