"""A role group: the ranks of one role as Ray actors in a placement group, one DeepSpeed world.

`call_async(method, ...)` calls every rank and returns refs; `call(...)` is `ray.get` of that.
Placement: each role reserves a placement group of one bundle per rank up front; when the cluster
cannot satisfy it within `timeout_s`, the error names the role and the missing resources.
"""

import math

import ray
from ray.util.placement_group import (
    PlacementGroup,
    placement_group,
    remove_placement_group,
)
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from orchestrator.config import RoleConfig
from workers.errors import UserError

RESOURCE_PER_RANK = 0.01  # a rank takes a sliver of a node's custom resource: it marks the node kind


class PlacementError(UserError):
    """The cluster cannot host a role as configured."""


def connect(logical_cpus: float = 0) -> bool:
    """Attach to the cluster in RAY_ADDRESS (`ray job submit`, `ray start`), else start a local one.

    A local cluster gets at least `logical_cpus` logical CPUs: on a laptop every role shares the same
    cores, and reservations only need to fit, not to match cores (each rank sets its own threads).
    Returns True when it started that local cluster (whose nodes are then all there will ever be).
    """
    import os

    if ray.is_initialized():
        return False
    local = not os.environ.get("RAY_ADDRESS")
    if local:
        # "local": without it Ray attaches to whatever /tmp/ray/ray_current_cluster names (a stale
        # `ray start` or test cluster), and then refuses num_cpus.
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, math.ceil(logical_cpus)))
    else:
        ray.init()
    ray.data.DataContext.get_current().enable_progress_bars = False  # jobs print their own status lines
    return local


def unplaceable_roles(bundles: dict[str, dict[str, float]], nodes: list[dict[str, float]]) -> list[str]:
    """One line per role none of whose ranks fits on any node of `nodes` (resource dicts)."""
    lines = []
    for role, need in bundles.items():
        if not any(all(node.get(key, 0.0) >= amount for key, amount in need.items()) for node in nodes):
            lines.append(f"roles.{role}: no node offers {need} for one rank (nodes: {[schedulable(n) for n in nodes]}); "
                         f"lower roles.{role}.cpus_per_rank/gpus_per_rank, fix roles.{role}.node_resource, or add such nodes")
    return lines


def cluster_nodes() -> list[dict[str, float]]:
    """The resources of every live node of the connected cluster."""
    return [node["Resources"] for node in ray.nodes() if node["Alive"]]


def local_nodes() -> list[dict[str, float]]:
    """What a local cluster started by `connect` would offer: any CPU count (it is sized to fit), this machine's GPUs."""
    import torch

    return [{"CPU": float("inf"), "GPU": float(torch.cuda.device_count())}]


def check_placement(bundles: dict[str, dict[str, float]], nodes: list[dict[str, float]], fixed_cluster: bool) -> None:
    """Before any actor starts: fail at once (fixed cluster) or warn (it may autoscale) when a role cannot fit."""
    problems = unplaceable_roles(bundles, nodes)
    if problems and fixed_cluster:
        raise PlacementError(problems[0])
    for line in problems:
        print(f"warning: {line}; waiting for the autoscaler up to the placement timeout", flush=True)


def is_role_failure(error: BaseException) -> bool:
    """A role actor or its node died or hung (restartable), as opposed to a bug or a config mistake."""
    from ray.exceptions import (
        GetTimeoutError,
        NodeDiedError,
        ObjectLostError,
        RayActorError,
        RayTaskError,
        WorkerCrashedError,
    )

    lost = (RayActorError, GetTimeoutError, ObjectLostError, WorkerCrashedError, NodeDiedError)
    return isinstance(error, lost) or (isinstance(error, RayTaskError) and isinstance(error.cause, lost))


def schedulable(resources: dict) -> dict:
    """Cluster resources a user configures (CPU, GPU, custom), without Ray's internal ones."""
    internal = ("node:", "CPU_group", "GPU_group", "bundle_group", "memory", "object_store_memory")
    return {k: v for k, v in resources.items() if not k.startswith(internal) and "_group_" not in k}


def bundle(config: RoleConfig) -> dict[str, float]:
    resources = {"CPU": config.cpus_per_rank}
    if config.gpus_per_rank:
        resources["GPU"] = config.gpus_per_rank
    if config.node_resource:
        resources[config.node_resource] = RESOURCE_PER_RANK
    return resources


class RoleGroup:
    def __init__(self, name: str, actor_class: type, config: RoleConfig, seed: int, timeout_s: float = 60.0, run: str = "",
                 reserved: tuple[PlacementGroup, int] | None = None):
        """`run` tags the role's dashboard metrics (workers/role_metrics.py), so runs sharing a cluster stay apart.
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
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.placement, placement_group_bundle_index=first_bundle + rank),
            ).remote(rank, config.ranks, config.threads_per_rank, seed, run)
            for rank in range(config.ranks)
        ]
        self.node_ids: list[str] = []

    def join(self) -> "RoleGroup":
        """Form the role's DeepSpeed world. Separate from starting the actors, so that every role's
        processes start (import torch, DeepSpeed, diffusers) at the same time."""
        master_addr, master_port = ray.get(self.actors[0].address.remote())
        # Every rank joins at once: the rendezvous waits for all of them. Each role has its own port.
        self.node_ids = ray.get([actor.join_world.remote(master_addr, master_port) for actor in self.actors])
        return self

    @staticmethod
    def _reserve(name: str, config: RoleConfig, timeout_s: float) -> PlacementGroup:
        placement = placement_group([bundle(config)] * config.ranks, strategy="PACK", name=f"{name}-{id(config)}")
        ready, _ = ray.wait([placement.ready()], timeout=timeout_s)
        if not ready:
            remove_placement_group(placement)
            raise PlacementError(
                f"roles.{name}: the cluster could not place {config.ranks} rank(s) of {bundle(config)} within {timeout_s:.0f}s "
                f"(cluster has {schedulable(ray.cluster_resources())} in all); lower roles.{name}.ranks or its resources, or add nodes that carry them"
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

    def shutdown(self) -> None:
        """Kill every rank (dead ones too) and release the placement group if the role reserved it."""
        for actor in self.actors:
            ray.kill(actor)
        if self.owns_placement:
            remove_placement_group(self.placement)


ROLES = ("teacher", "critic", "generator")
DRIVER_BUNDLES = [{"CPU": 1.0}, {"CPU": 1.0}]
"""A trial's driver (Tune's trainable actor takes the first bundle) and room for its Ray Data work."""


def trial_bundles(roles) -> list[dict[str, float]]:
    """Every bundle one distillation needs, in the order `role_bundle_offsets` indexes: the driver's, then each role's ranks."""
    return DRIVER_BUNDLES + [bundle(getattr(roles, name)) for name in ROLES for _ in range(getattr(roles, name).ranks)]


def role_bundle_offsets(roles) -> dict[str, int]:
    """Index of each role's first bundle in `trial_bundles(roles)`."""
    offsets, index = {}, len(DRIVER_BUNDLES)
    for name in ROLES:
        offsets[name], index = index, index + getattr(roles, name).ranks
    return offsets


def shard_count(*groups: RoleGroup) -> int:
    """Messages per batch: every rank of every role gets a whole number of them."""
    return math.lcm(*(group.ranks for group in groups))


def assign(shards: list, ranks: int) -> list[list]:
    """Shards for each rank of a consumer role: contiguous, equal-sized runs."""
    per_rank = len(shards) // ranks
    return [shards[r * per_rank : (r + 1) * per_rank] for r in range(ranks)]
