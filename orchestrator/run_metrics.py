"""A run's live training signals for Prometheus and Grafana, through ray.util.metrics (the driver's side).

The role actors export their own per-call metrics (workers/roles/metrics.py); the driver adds what
only it knows, once per log (every `log_every` generator steps). Ray exports both with a `ray_`
prefix through each node's metrics agent; counters gain `_total`. All carry the tag `run` (the run
folder's name), so runs sharing a cluster stay apart. docs/dashboards.md lists every name and tag.
"""

import time

LOSS_TERMS = {
    "generator": ("dm_loss", "srl_loss", "gan_loss"),
    "critic": ("denoising_loss", "discriminator_loss"),
}
ROLES = ("teacher", "critic", "generator")


class RunMetrics:
    """Gauges and counters of one distillation run, set from the driver."""

    def __init__(self, run: str, total_steps: int):
        from ray.util.metrics import Gauge

        self.tags, self.total = {"run": run}, total_steps
        self.loss = Gauge("flashdistill_loss", "Latest loss of a role, by loss term", tag_keys=("run", "role", "term"))
        self.steps = Gauge("flashdistill_generator_steps", "Generator steps done", tag_keys=("run",))
        self.steps_target = Gauge(
            "flashdistill_generator_steps_target", "Generator steps the run is to do", tag_keys=("run",)
        )
        self.ratio = Gauge(
            "flashdistill_critic_updates_per_generator_update",
            "Critic updates per generator update, measured over the last log interval",
            tag_keys=("run",),
        )
        self.evaluation = Gauge(
            "flashdistill_eval", "Latest evaluation of the exported student, by metric", tag_keys=("run", "metric")
        )
        self.cycle_seconds = Gauge("flashdistill_cycle_seconds", "Wall seconds per TTUR cycle", tag_keys=("run",))
        self.compute_seconds = Gauge(
            "flashdistill_role_compute_seconds",
            "Seconds per cycle a role computes (mean over ranks)",
            tag_keys=("run", "role"),
        )
        self.wait_seconds = Gauge(
            "flashdistill_role_wait_seconds",
            "Seconds per cycle a role waits for the others (cycle seconds minus its compute)",
            tag_keys=("run", "role"),
        )
        self.skipped = Gauge(
            "flashdistill_skipped_cycles",
            "Cycles with an update skipped for non-finite numbers, so far",
            tag_keys=("run",),
        )
        self.restarts = Gauge(
            "flashdistill_restarts", "Restarts of the role groups from a checkpoint, so far", tag_keys=("run",)
        )
        self.last = None  # (time, step, critic updates) at the previous log

    def log(self, step: int, metrics: dict[str, float], progress) -> None:
        """One log interval: losses, progress, the measured TTUR ratio, compute and waiting per role."""
        for role, terms in LOSS_TERMS.items():
            for term in terms:
                if f"{role}/{term}" in metrics:
                    self.loss.set(metrics[f"{role}/{term}"], tags=self.tags | {"role": role, "term": term})
        self.steps.set(step, tags=self.tags)
        # Set at every log, not once: Ray exports only gauges recorded since its previous export.
        self.steps_target.set(self.total, tags=self.tags)
        self.skipped.set(progress.skipped_cycles, tags=self.tags)
        self.restarts.set(progress.restarts, tags=self.tags)
        critic_updates = progress.critic_updates
        now = time.perf_counter()
        if self.last is not None and step > self.last[1]:
            then, last_step, last_critic = self.last
            cycles = step - last_step
            cycle = (now - then) / cycles
            self.cycle_seconds.set(cycle, tags=self.tags)
            self.ratio.set((critic_updates - last_critic) / cycles, tags=self.tags)
            for role in ROLES:
                compute = (
                    sum(v for k, v in metrics.items() if k.startswith(f"{role}/") and k.endswith("_seconds")) / cycles
                )
                self.compute_seconds.set(compute, tags=self.tags | {"role": role})
                self.wait_seconds.set(max(cycle - compute, 0.0), tags=self.tags | {"role": role})
        self.last = (now, step, critic_updates)

    def evaluated(self, metrics: dict[str, float]) -> None:
        for name in ("fd", "class_accuracy", "precision", "recall"):
            if metrics.get(name) is not None:
                self.evaluation.set(metrics[name], tags=self.tags | {"metric": name})

    def restarted(self) -> None:
        self.last = None  # the interval spans the restart: its cycle time would mislead
