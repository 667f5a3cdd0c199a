"""One TTUR cycle: N critic updates and one generator update, as messages between the three role groups.

Tensors travel between groups as object refs (the driver never holds them); the driver only sees
the small metric dicts the updates return. Every update's random draws are keyed by
(generator step, slot), `CycleKeys`, so a cycle's samples do not depend on how the work overlaps.
"""

from dataclasses import dataclass

import numpy as np

from orchestrator.config import DistillConfig
from orchestrator.role_group import Roles, assign, shard_count


def draw_student_step(rng: np.random.Generator, steps: int, weights: list[float] | None = None) -> int:
    """k, the student step a generator call trains (or feeds the critic): uniform (DMD2), or by `weights`."""
    if weights is None:
        return int(rng.integers(steps))
    return int(rng.choice(steps, p=np.asarray(weights, dtype=float) / sum(weights)))


@dataclass
class CycleKeys:
    """The keys of one cycle's updates, in the order they are queued: (step, slot), one slot per update."""

    fresh: list[tuple[int, int]]
    """Critic updates on fresh samples, before the generator's update."""
    generator: tuple[int, int]
    """The generator's update batch."""
    beside_generator: tuple[int, int] | None
    """The critic update on the generator's own batch, beside its update (with_generator); None: before_generator."""


def cycle_keys(config: DistillConfig, step: int) -> CycleKeys:
    """Which critic updates of cycle `step` train on fresh samples and which beside the generator's.

    Slots 0 .. N-1 are the critic updates and slot N the generator's, so no two updates of a run share a key."""
    n = config.dmd2.critic_updates_per_generator_update
    beside = config.dmd2.last_critic_update == "with_generator"
    fresh = [(step, slot) for slot in range(n - beside)]
    return CycleKeys(fresh, (step, n), (step, n - 1) if beside else None)


def generate(groups: Roles, request) -> list:
    """Ask every generator rank for samples; returns one ref per shard, in rank order."""
    refs = []
    for actor in groups.generator.actors:
        out = actor.generate.options(num_returns=request.shards).remote(request)
        refs += out if request.shards > 1 else [out]
    return refs


def cycle(groups: Roles, config: DistillConfig, step: int, rng: np.random.Generator) -> dict[str, float]:
    """One TTUR cycle: N critic updates and one generator update; returns the cycle's metrics.

    DMD2's release order (the default, dmd2.last_critic_update=with_generator): N - 1 critic updates
    on fresh samples, the generator's update against that critic, and the N-th critic update on the
    generator's own batch at the same time as the generator's; before_generator: all N first."""
    import ray

    from workers.roles.messages import GenerateRequest

    shards = shard_count(*groups.all())
    per_generator_rank = shards // groups.generator.ranks
    student_steps, weights = len(config.student.timesteps), config.student.step_weights

    def request(key: tuple[int, int], keep_graph: bool) -> GenerateRequest:
        return GenerateRequest(key, draw_student_step(rng, student_steps, weights), keep_graph, per_generator_rank)

    def train_critic(key: tuple[int, int], fakes: list) -> list:
        own = assign(fakes, groups.critic.ranks)
        return [actor.train_step.remote(key, *shards) for actor, shards in zip(groups.critic.actors, own)]

    # Critic updates on fresh samples. The generator's weights are fixed until its update, so all
    # requests go out at once and the actors' queues pipeline them: equal to the plain schedule.
    keys = cycle_keys(config, step)
    critic_refs = []
    for key in keys.fresh:
        critic_refs += train_critic(key, generate(groups, request(key, keep_graph=False)))

    # Generator update: samples with graph; teacher and critic answer per shard, in parallel.
    fakes = generate(groups, request(keys.generator, keep_graph=True))
    teacher = groups.teacher.actors
    critic = groups.critic.actors
    answers = [teacher[i * len(teacher) // len(fakes)].answer.remote(f) for i, f in enumerate(fakes)]
    feedback = [critic[i * len(critic) // len(fakes)].feedback.remote(f) for i, f in enumerate(fakes)]
    ranks = groups.generator.ranks
    generator_refs = [
        actor.update.remote(per_generator_rank, *own_answers, *own_feedback)
        for actor, own_answers, own_feedback in zip(
            groups.generator.actors, assign(answers, ranks), assign(feedback, ranks)
        )
    ]
    if keys.beside_generator is not None:  # queued behind its feedback, it runs while the generator updates
        critic_refs += train_critic(keys.beside_generator, fakes)
    results = ray.get(generator_refs + critic_refs, timeout=config.fault_tolerance.cycle_timeout_s)
    return mean_metrics(results) | {"critic/updates": len(critic_refs) / groups.critic.ranks}


def mean_metrics(results: list[dict[str, float]]) -> dict[str, float]:
    """Each metric's mean over the results that report it."""
    keys = {k for r in results for k in r}
    return {k: float(np.mean([r[k] for r in results if k in r])) for k in sorted(keys)}
