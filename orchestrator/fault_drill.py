"""The fault drill: the tiny job on a simulated multi-node cluster, each fault of a shared GPU cluster in turn.

A `DrillCluster` is a head (no role resources), an inference node (`inference_gpu`, the teacher's)
and a train node (`train_gpu`, critic and generator); the roles are placed by those resources. Each
fault hits at a generator step drawn from a seeded generator, so a failure reproduces:

- graceful_stop: SIGTERM to the driver (what `ray job stop` sends); the rerun continues.
- lost_node: the train node is removed mid-run, a new one joins a few seconds later.
- capacity_never_returns: the train node is removed and nothing replaces it.
- lost_driver: SIGKILL to a driver process the moment it starts writing a checkpoint.

Every fault ends with the run finished by a rerun of the same config, and a row: when it hit, the
checkpoint it resumed from, the steps lost, seconds to recover, the final step, whether every
checkpoint left behind verifies, and whether the MLflow run stayed the same.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from orchestrator.config import DistillConfig
from orchestrator.config_loading import load_config

FAULTS = ("graceful_stop", "lost_node", "capacity_never_returns", "lost_driver")
STEPS, CHECKPOINT_EVERY = 12, 4
TINY = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "tiny.yaml"
ROLE_PLACEMENT = [
    "roles.teacher.node_resource=inference_gpu",
    "roles.critic.node_resource=train_gpu",
    "roles.generator.node_resource=train_gpu",
]


@dataclass
class FaultResult:
    fault: str
    hit_step: int  # the generator step the fault hit after
    resumed_from: int | None  # the checkpoint's step the run continued from (None: from the start)
    steps_lost: int  # steps done before the fault that were done again
    recovery_seconds: float  # from the fault to the run past the step it hit at again
    final_step: int
    checkpoints_intact: bool  # every checkpoint left behind verifies, and no staging folder was loaded
    same_mlflow_run: bool
    note: str = ""


class DrillCluster:
    """A simulated cluster of three node kinds on this machine (`ray.cluster_utils.Cluster`)."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.inference = cluster.add_node(num_cpus=2, resources={"inference_gpu": 1})
        self.train = self.add_train_node()
        cluster.wait_for_nodes()

    @classmethod
    def start(cls) -> "DrillCluster":
        from ray.cluster_utils import Cluster

        return cls(Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False}))

    def add_train_node(self):
        # add_node waits for the node itself; not wait_for_nodes, which counts a just-removed node until the
        # cluster's health check declares it dead.
        return self.cluster.add_node(num_cpus=2, resources={"train_gpu": 1})

    def remove_train_node(self) -> None:
        """The node and every process on it gone at once, as when a machine is lost (Ray's removal stops the
        node's own processes; its workers would live on, finishing a step, until they notice)."""
        import psutil

        raylet = psutil.Process(self.train.all_processes["raylet"][0].process.pid)
        workers = raylet.children(recursive=True)
        self.cluster.remove_node(self.train, allow_graceful=False)
        for worker in workers:
            try:
                worker.kill()
            except psutil.NoSuchProcess:
                pass

    def remove_nodes(self) -> None:
        """Take out the nodes this drill added (a cluster it shares, the tests', carries on without them)."""
        for node in (self.inference, self.train):
            if node in self.cluster.worker_nodes:
                self.cluster.remove_node(node)

    def shutdown(self) -> None:
        self.cluster.shutdown()


def drill_overrides(teacher: Path, data: Path) -> list[str]:
    """The tiny config's overrides of every drill run, in-process or as a driver subprocess."""
    return [
        f"teacher={teacher}",
        f"data={data}",
        "teacher_recipe=null",
        f"generator_steps={STEPS}",
        f"checkpoint_every={CHECKPOINT_EVERY}",
        "log_every=1",
        "eval_every=0",
        "eval_num=50",
        *ROLE_PLACEMENT,
    ]


def drill_config(teacher: Path, data: Path, output: Path, *overrides: str) -> DistillConfig:
    return load_config(DistillConfig, TINY, [*drill_overrides(teacher, data), f"output={output}", *overrides])


def checkpoints_intact(output: Path) -> bool:
    from orchestrator.checkpoint import CheckpointError, verify_checkpoint

    try:
        return all(verify_checkpoint(p) for p in (Path(output) / "checkpoints").glob("step-*"))
    except CheckpointError:
        return False


def logged_steps(config: DistillConfig, run_id: str) -> list[int]:
    """The steps of the run's generator loss in MLflow, in order (each once when nothing repeated)."""
    from mlflow import MlflowClient

    from orchestrator.tracking import tracking_uri

    history = MlflowClient(tracking_uri(config.tracking.tracking_uri)).get_metric_history(run_id, "generator/dm_loss")
    return sorted(m.step for m in history)


class StepWatch:
    """`on_step` for `distill`: records every logged step with its time, and fires `action` once at `hit`."""

    def __init__(self, hit: int, action=None):
        self.hit, self.action, self.events, self.fault_time = hit, action, [], None

    def __call__(self, step: int) -> None:
        self.events.append((step, time.monotonic()))
        if step == self.hit and self.action is not None:
            action, self.action = self.action, None
            self.fault_time = time.monotonic()
            action()

    def reached(self) -> int:
        """The furthest step logged before the run went back (a restart from a checkpoint), or at all."""
        furthest = 0
        for step, _ in self.events:
            if step <= furthest:
                return furthest
            furthest = step
        return furthest


def after(watch: StepWatch, step: int, since: float) -> float:
    """Seconds from `since` until the run logged a step past `step` again."""
    return min(t for s, t in watch.events if s > step and t > since) - since


def row(
    fault: str, hit: int, summary: dict, recovery: float, output: Path, run_id: str | None, note: str
) -> FaultResult:
    resumed = summary["resumes"][-1] if summary["resumes"] else None
    return FaultResult(
        fault,
        hit,
        resumed,
        hit - (resumed or 0),
        recovery,
        summary["generator_steps"],
        checkpoints_intact(output),
        summary["mlflow_run_id"] == run_id,
        note,
    )


def graceful_stop(cluster: DrillCluster, teacher: Path, data: Path, folder: Path, hit: int) -> FaultResult:
    from orchestrator.distill import distill
    from orchestrator.progress import Progress
    from orchestrator.stopping import StopRequested

    config = drill_config(teacher, data, folder / "run")
    watch = StepWatch(hit, lambda: os.kill(os.getpid(), signal.SIGTERM))
    try:
        distill(config, on_step=watch)
        raise AssertionError("the run was not stopped by SIGTERM")
    except StopRequested as stopped:
        stopped_at = stopped.step
    run_id = Progress.load(
        Path(config.output) / "checkpoints" / f"step-{stopped_at:06d}" / "progress.json"
    ).mlflow_run_id
    again = StepWatch(-1)
    summary = distill(config, on_step=again)
    steps = logged_steps(config, summary["mlflow_run_id"])
    once = steps == list(range(1, STEPS + 1))
    note = "checkpointed where it stopped; MLflow has every step once" if once else f"MLflow steps {steps}"
    return row(
        "graceful_stop", stopped_at, summary, after(again, stopped_at, watch.fault_time), config.output, run_id, note
    )


def lost_node(
    cluster: DrillCluster, teacher: Path, data: Path, folder: Path, hit: int, comes_back: bool
) -> FaultResult:
    """Remove the node holding critic and generator at step `hit`; a new one joins after 3 s, or none does."""
    from orchestrator.distill import distill
    from orchestrator.placement import PlacementError

    config = drill_config(teacher, data, folder / "run", f"fault_tolerance.capacity_wait_s={60 if comes_back else 8}")

    # distill runs on a thread and the node changes on this one: Ray's node handling installs signal handlers,
    # which only the main thread may do. The step callback holds the run until the node is gone, so the fault
    # hits after step `hit` and not a checkpoint later.
    hit_reached, node_removed, outcome = threading.Event(), threading.Event(), {}

    def hold_for_the_fault() -> None:
        hit_reached.set()
        node_removed.wait(120)

    def train(on_step) -> None:
        try:
            outcome["summary"] = distill(config, on_step=on_step)
        except BaseException as error:  # re-raised or reported on the main thread
            outcome["error"] = error

    watch = StepWatch(hit, hold_for_the_fault)
    runner = threading.Thread(target=train, args=(watch,), daemon=True)
    runner.start()
    while not hit_reached.wait(0.2) and runner.is_alive():
        pass
    if hit_reached.is_set():
        cluster.remove_train_node()
        node_removed.set()
        if comes_back:
            time.sleep(3)
            cluster.train = cluster.add_train_node()
    runner.join()
    error, summary, finished = outcome.get("error"), outcome.get("summary"), watch
    if error is not None and not (isinstance(error, PlacementError) and not comes_back):
        raise error
    if error is not None:
        cluster.train = cluster.add_train_node()  # capacity back: the same command resumes
        finished = StepWatch(-1)
        note = f"stopped: {str(error).split(';')[0]}; rerun once a node joined"
    else:
        note = f"restarted {summary['restarts']} time(s), the roles re-placed on the new node"
    run_id = None
    if summary is None:
        from orchestrator.checkpoint import latest_checkpoint
        from orchestrator.progress import Progress

        run_id = Progress.load(latest_checkpoint(Path(config.output) / "checkpoints") / "progress.json").mlflow_run_id
        summary = distill(config, on_step=finished)
    fault = "lost_node" if comes_back else "capacity_never_returns"
    return row(
        fault,
        hit,
        summary,
        after(finished, hit, watch.fault_time),
        config.output,
        run_id or summary["mlflow_run_id"],
        note,
    )


def lost_driver(cluster: DrillCluster, teacher: Path, data: Path, folder: Path, hit: int) -> FaultResult:
    """SIGKILL a driver process the moment it starts writing the first checkpoint after step `hit`."""
    from orchestrator.checkpoint import latest_checkpoint
    from orchestrator.distill import distill
    from orchestrator.progress import Progress

    config = drill_config(teacher, data, folder / "run")
    checkpoints = Path(config.output) / "checkpoints"
    overrides = [f"--set={o}" for o in drill_overrides(teacher, data)]
    env = os.environ | {"RAY_ADDRESS": cluster.cluster.address, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "jobs.distill", "--config", str(TINY), "--output", str(config.output), *overrides]
    driver = subprocess.Popen(command, cwd=TINY.parents[2], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    target = (hit // CHECKPOINT_EVERY + 1) * CHECKPOINT_EVERY  # the first checkpoint after the hit
    staging = checkpoints / f".staging-step-{target:06d}"
    deadline = time.monotonic() + 600
    while not staging.exists() and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    driver.send_signal(signal.SIGKILL)
    fault_time = time.monotonic()
    _, errors = driver.communicate()
    if not staging.exists() and not (checkpoints / f"step-{target:06d}").exists():
        raise AssertionError(f"the driver never reached checkpoint {target}: {errors.decode()[-2000:]}")
    half_written = staging.exists() and not (staging / "manifest.json").exists()
    before = latest_checkpoint(checkpoints)
    run_id = Progress.load(before / "progress.json").mlflow_run_id if before else None
    again = StepWatch(-1)
    summary = distill(config, on_step=again)
    note = "killed while writing a checkpoint: " + ("half-written, never loaded" if half_written else "it completed")
    return row("lost_driver", target, summary, after(again, target - 1, fault_time), config.output, run_id, note)


def run_fault(
    name: str, cluster: DrillCluster, teacher: Path, data: Path, folder: Path, rng: np.random.Generator
) -> FaultResult:
    hit = int(rng.integers(CHECKPOINT_EVERY + 1, 2 * CHECKPOINT_EVERY))  # between two checkpoints
    shutil.rmtree(folder, ignore_errors=True)  # every fault starts a fresh run
    folder.mkdir(parents=True)
    if name == "graceful_stop":
        return graceful_stop(cluster, teacher, data, folder, hit)
    if name in ("lost_node", "capacity_never_returns"):
        return lost_node(cluster, teacher, data, folder, hit, comes_back=name == "lost_node")
    return lost_driver(cluster, teacher, data, folder, hit)


def format_rows(results: list[FaultResult]) -> str:
    header = (
        "| fault | hit after step | resumed from | steps lost | recovery | final step | checkpoints intact "
        "| same MLflow run | note |"
    )
    lines = [header, "|" + "---|" * 9]
    for r in results:
        lines.append(
            f"| {r.fault} | {r.hit_step} | {'-' if r.resumed_from is None else r.resumed_from} | {r.steps_lost} "
            f"| {r.recovery_seconds:.0f} s | {r.final_step} | {'yes' if r.checkpoints_intact else 'NO'} | "
            f"{'yes' if r.same_mlflow_run else 'NO'} | {r.note} |"
        )
    return "\n".join(lines)


def write_results(results: list[FaultResult], output: Path) -> str:
    table = format_rows(results)
    output.mkdir(parents=True, exist_ok=True)
    (output / "drill.md").write_text(table + "\n")
    (output / "drill.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
    return table
