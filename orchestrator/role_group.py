"""A role group: the ranks of one role as Ray actors in a placement group, one DeepSpeed world.

`call_async(method, ...)` calls every rank and returns refs; `call(...)` is `ray.get` of that.
Each role reserves a placement group of one bundle per rank up front; when the cluster cannot
satisfy it within `timeout_s`, the error names the role and the missing resources.
"""

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from orchestrator.config import DistillConfig, RoleConfig
from orchestrator.placement import RESOURCE_PER_RANK, PlacementError, bundle, role_bundle_offsets, schedulable


class RoleGroup:
    def __init__(
        self,
        name: str,
        actor_class: type,
        config: RoleConfig,
        seed: int,
        timeout_s: float = 60.0,
        run: str = "",
        reserved: tuple[PlacementGroup, int] | None = None,
    ):
        """`run` tags the role's dashboard metrics (workers/roles/metrics.py), so runs sharing a cluster stay apart.
        `reserved`: (placement group, first bundle) already holding one bundle per rank (a Tune trial's);
        else the role reserves its own placement group here."""
        self.name, self.config = name, config
        if reserved is None:
            self.placement, first_bundle, self.owns_placement = self._reserve(name, config, timeout_s), 0, True
        else:
            (self.placement, first_bundle), self.owns_placement = reserved, False
        remote_class = ray.remote(actor_class)
        self.actors = [
            remote_class.options(
                name=None,
                num_cpus=config.cpus_per_rank,
                num_gpus=config.gpus_per_rank,
                resources={config.node_resource: RESOURCE_PER_RANK} if config.node_resource else None,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self.placement, placement_group_bundle_index=first_bundle + rank
                ),
            ).remote(rank, config.ranks, config.threads_per_rank, seed, run)
            for rank in range(config.ranks)
        ]
        self.node_ids: list[str] = []

    def join_async(self, master: tuple[str, int]) -> list:
        """Every rank joins the role's DeepSpeed world at `master` (rank 0's address, a port of the role's own);
        returns refs to their node ids. Separate from starting the actors, so every role's processes start at once."""
        return [actor.join_world.remote(*master) for actor in self.actors]

    @staticmethod
    def _reserve(name: str, config: RoleConfig, timeout_s: float) -> PlacementGroup:
        placement = placement_group([bundle(config)] * config.ranks, strategy="PACK", name=f"{name}-{id(config)}")
        ready, _ = ray.wait([placement.ready()], timeout=min(timeout_s, 5.0))
        if not ready:  # say so when the cluster is waiting for capacity: a lost node, an autoscaler at work
            print(
                f"roles.{name}: waiting up to {timeout_s:.0f}s for nodes with {config.ranks} x {bundle(config)}",
                flush=True,
            )
            ready, _ = ray.wait([placement.ready()], timeout=max(timeout_s - 5.0, 0.0))
        if not ready:
            remove_placement_group(placement)
            raise PlacementError(
                f"roles.{name}: the cluster could not place {config.ranks} rank(s) of {bundle(config)} within "
                f"{timeout_s:.0f}s "
                f"(cluster has {schedulable(ray.cluster_resources())} in all); lower roles.{name}.ranks or its "
                f"resources, or add nodes that carry them"
            )
        return placement

    @property
    def ranks(self) -> int:
        return len(self.actors)

    def call_async(self, method: str, *args, **kwargs) -> list:
        """Call `method` on every rank with the same arguments; one ref per rank."""
        return [getattr(actor, method).remote(*args, **kwargs) for actor in self.actors]

    def call(self, method: str, *args, **kwargs) -> list:
        return ray.get(self.call_async(method, *args, **kwargs))

    def answers(self, timeout_s: float) -> bool:
        """Whether every rank answers a no-op call within `timeout_s` (a group with a dead rank has a broken world)."""
        refs = self.call_async("ping")
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        try:
            ray.get(ready)
        except Exception:  # a rank's death, whichever Ray error reports it
            return False
        return len(ready) == len(refs)

    def shutdown(self) -> None:
        """Kill every rank (dead ones too) and release the placement group if the role reserved it."""
        for actor in self.actors:
            ray.kill(actor)
        if self.owns_placement:
            remove_placement_group(self.placement)


def shard_count(*groups: RoleGroup) -> int:
    """Messages per batch: every rank of every role gets a whole number of them."""
    return math.lcm(*(group.ranks for group in groups))


def assign(shards: list, ranks: int) -> list[list]:
    """Shards for each rank of a consumer role: contiguous, equal-sized runs."""
    per_rank = len(shards) // ranks
    return [shards[r * per_rank : (r + 1) * per_rank] for r in range(ranks)]


@dataclass
class Roles:
    """A run's three role groups."""

    teacher: RoleGroup
    critic: RoleGroup
    generator: RoleGroup

    def all(self) -> list[RoleGroup]:
        return [self.teacher, self.critic, self.generator]

    def shutdown(self) -> None:
        for group in self.all():
            group.shutdown()


def start_roles(
    config: DistillConfig,
    num_train_timesteps: int,
    placement_timeout_s: float | None = None,
    keep: dict[str, RoleGroup] | None = None,
) -> Roles:
    """Start the teacher, critic and generator groups and load their models; each group waits up to
    `placement_timeout_s` (default: the config's) for the nodes its ranks need. `keep`: groups of a failed
    run that still answer, by role, reused as they are (the caller loads the checkpoint into every group)."""
    from ray.util import get_current_placement_group

    from orchestrator.setups import role_setups
    from workers.roles.critic import Critic
    from workers.roles.generator import Generator
    from workers.roles.teacher import Teacher

    roles, keep = config.roles, keep or {}
    trial = get_current_placement_group()  # inside a Tune trial: its reservation holds every role's bundles
    offsets = role_bundle_offsets(roles)
    if trial is not None:
        # Ray Data's default SPREAD strategy would wait for CPUs outside the trial's reservation
        # (measured: a sweep hung on its first read); its work goes into the trial's data bundle.
        context = ray.data.DataContext.get_current()
        context.scheduling_strategy = context.scheduling_strategy_large_args = PlacementGroupSchedulingStrategy(trial)
    started: list[RoleGroup] = []
    try:  # a failure part-way leaves no actor or placement group behind
        for name, actor_class in (("teacher", Teacher), ("critic", Critic), ("generator", Generator)):
            if name in keep:
                continue
            reserved = (trial, offsets[name]) if trial is not None else None
            started.append(
                RoleGroup(
                    name,
                    actor_class,
                    getattr(roles, name),
                    config.seed,
                    placement_timeout_s or config.placement_timeout_s,
                    run=Path(config.output).name,
                    reserved=reserved,
                )
            )
        new = {group.name: group for group in started}
        groups = Roles(**keep, **new)
        real_data = {
            "teacher": False,
            "critic": config.dmd2.gan_generator_weight > 0,
            "generator": config.student.inputs == "forward_noised",
        }
        teacher = str(Path(config.teacher).resolve())
        setups = dict(zip(("teacher", "critic", "generator"), role_setups(config, num_train_timesteps)))
        calls = []
        # Ray Data reads the real images while the roles' processes start and join their worlds, not after
        # them: reading Fashion-MNIST's 60,000 training images took 11 to 16 s of each start on 2 cores.
        with ThreadPoolExecutor(max_workers=1) as reader:
            splits = {
                name: reader.submit(real_data_splits, config.data, group.ranks)
                for name, group in new.items()
                if real_data[name]
            }
            join_worlds(started)
            for name, group in new.items():
                for rank, actor in enumerate(group.actors):
                    data = (splits[name].result()[rank],) if name in splits else ()
                    calls.append(actor.setup.remote(teacher, setups[name], *data))
        ray.get(calls, timeout=config.fault_tolerance.cycle_timeout_s)
        return groups
    except BaseException:
        for group in started:
            group.shutdown()
        raise


def join_worlds(groups: list[RoleGroup]) -> None:
    """Form every group's DeepSpeed world at once: one role's DeepSpeed import and rendezvous overlap the others'."""
    masters = ray.get([group.actors[0].host_rendezvous.remote() for group in groups])
    joins = [group.join_async(master) for group, master in zip(groups, masters)]
    for group, refs in zip(groups, joins):
        group.node_ids = ray.get(refs)


def real_data_splits(path: Path, ranks: int) -> list:
    """One materialized Ray Data split per rank, in a fixed order so a resumed run sees the same stream.

    Read once into the object store and split by blocks: no split-coordinator actor to start per role and
    restart (`streaming_split` starts one)."""
    from workers.data.streams import ray_dataset

    return ray_dataset(path).materialize().split(ranks, equal=True)
