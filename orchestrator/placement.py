"""Where role ranks run: connecting to (or starting) a Ray cluster, each rank's resource bundle, and the
checks that a cluster can hold the roles before anything starts.

Each role reserves a placement group of one bundle per rank (`RoleGroup`); a Tune trial reserves
every role's bundles plus its driver's in one placement group (`trial_bundles`).
"""

import math

import ray

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
            lines.append(
                f"roles.{role}: no node offers {need} for one rank (nodes: {[schedulable(n) for n in nodes]}); "
                f"lower roles.{role}.cpus_per_rank/gpus_per_rank, fix roles.{role}.node_resource, or add such nodes"
            )
    return lines


def cluster_nodes() -> list[dict[str, float]]:
    """The resources of every live node of the connected cluster."""
    return [node["Resources"] for node in ray.nodes() if node["Alive"]]


def local_nodes() -> list[dict[str, float]]:
    """What a local cluster started by `connect` offers: any CPU count (it is sized to fit), this machine's GPUs."""
    import torch

    return [{"CPU": float("inf"), "GPU": float(torch.cuda.device_count())}]


def short_totals(demand: dict[str, float], nodes: list[dict[str, float]]) -> dict[str, tuple[float, float]]:
    """{resource: (needed, present)} for every resource the cluster's totals are short of."""
    return {
        key: (amount, total)
        for key, amount in demand.items()
        if amount > (total := sum(node.get(key, 0.0) for node in nodes)) + 1e-9
    }


def check_placement(roles, nodes: list[dict[str, float]], may_grow: bool) -> None:
    """Before any actor starts: when a rank fits on no node, or all ranks together exceed the cluster's
    totals, fail at once, or (`may_grow`: an autoscaling cluster) warn and let the placement wait."""
    bundles = {name: bundle(getattr(roles, name)) for name in ROLES}
    problems = unplaceable_roles(bundles, nodes)
    demand: dict[str, float] = {}
    for name in ROLES:
        for key, amount in bundles[name].items():
            demand[key] = demand.get(key, 0.0) + amount * getattr(roles, name).ranks
    short = short_totals(demand, nodes)
    if short:
        missing = ", ".join(f"{need:g} {key} needed, {have:g} present" for key, (need, have) in short.items())
        per_role = "; ".join(f"{name} {getattr(roles, name).ranks} x {bundles[name]}" for name in ROLES)
        problems.append(
            f"the cluster's totals cannot hold the roles at once ({missing}; {per_role}): start the "
            "cluster with more resources (e.g. `ray start --head --num-cpus 4`), add nodes, or lower the "
            "roles' ranks or cpus_per_rank/gpus_per_rank"
        )
    if problems and not may_grow:
        raise PlacementError(problems[0] + " (set cluster_autoscales: true to wait for an autoscaler instead)")
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
        UnserializableException,
        WorkerCrashedError,
    )

    lost = (RayActorError, GetTimeoutError, ObjectLostError, WorkerCrashedError, NodeDiedError)
    if isinstance(error, UnserializableException):
        # An error Ray could not rebuild (Ray Data's, when a read's actor was on a node that died): only its text
        # says what happened.
        return any(sign in str(error) for sign in ("its node has died", "node was terminated unexpectedly"))
    return isinstance(error, lost) or (isinstance(error, RayTaskError) and isinstance(error.cause, lost))


@ray.remote(num_cpus=0)
def answer() -> bool:
    return True


def wait_out_silent_nodes(timeout_s: float) -> None:
    """After a role failure, before anything is placed again: every node Ray lists as alive runs a no-resource
    task; a node that does not answer is waited for until Ray declares it dead (at most `timeout_s`). A node
    that is gone stays listed until its health checks run out, and a restart that placed a rank or a data
    read there would fail again."""
    import time

    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    def alive() -> set[str]:
        return {node["NodeID"] for node in ray.nodes() if node["Alive"]}

    pending = {
        node: answer.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
        for node in alive()
    }
    deadline, said = time.monotonic() + timeout_s, False
    while pending and time.monotonic() < deadline:
        ready, _ = ray.wait(list(pending.values()), num_returns=len(pending), timeout=1.0)
        listed = alive()
        pending = {node: ref for node, ref in pending.items() if ref not in ready and node in listed}
        if pending and not said:
            print(
                f"{len(pending)} node(s) did not answer ({', '.join(n[:8] for n in pending)}); waiting up to "
                f"{timeout_s:.0f}s for Ray to declare them dead before the roles are placed again",
                flush=True,
            )
            said = True
    for ref in pending.values():
        ray.cancel(ref, force=True)


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


ROLES = ("teacher", "critic", "generator")
DRIVER_BUNDLES = [{"CPU": 1.0}, {"CPU": 1.0}]
"""A trial's driver (Tune's trainable actor takes the first bundle) and room for its Ray Data work."""


def trial_bundles(roles) -> list[dict[str, float]]:
    """Every bundle one distillation needs, in `role_bundle_offsets` order: the driver's, then each role's ranks."""
    return DRIVER_BUNDLES + [bundle(getattr(roles, name)) for name in ROLES for _ in range(getattr(roles, name).ranks)]


def role_bundle_offsets(roles) -> dict[str, int]:
    """Index of each role's first bundle in `trial_bundles(roles)`."""
    offsets, index = {}, len(DRIVER_BUNDLES)
    for name in ROLES:
        offsets[name], index = index, index + getattr(roles, name).ranks
    return offsets
