"""Live per-role metrics for the Ray dashboard and Prometheus, through ray.util.metrics.

Every node's metrics agent exports them (`ray.nodes()[i]["MetricsExportPort"]`, path /metrics)
with Ray's `ray_` prefix, tagged by role, endpoint and run (the run's output folder name):

    ray_flashdistill_step_seconds          gauge: seconds of an endpoint's latest call
    ray_flashdistill_images_per_second     gauge: images through that call per second
    ray_flashdistill_calls_total           counter: calls; critic train_step counts critic updates,
                                           generator update counts generator updates
    ray_flashdistill_bytes_received_total  counter: bytes of message arrays received from other roles
"""

TAGS = ("role", "endpoint", "run")


class RoleMetrics:
    """One actor's metrics (made inside the actor: Ray records them per worker process)."""

    def __init__(self, role: str, run: str):
        from ray.util.metrics import Counter, Gauge

        self.tags = {"role": role, "run": run}
        self.step_seconds = Gauge(
            "flashdistill_step_seconds", "Seconds of a role endpoint's latest call", tag_keys=TAGS
        )
        self.images_per_second = Gauge(
            "flashdistill_images_per_second", "Images through a role endpoint's latest call per second", tag_keys=TAGS
        )
        self.calls = Counter(
            "flashdistill_calls",
            "Calls of a role endpoint (critic train_step: critic updates; generator update: generator updates)",
            tag_keys=TAGS,
        )
        self.bytes_received = Counter(
            "flashdistill_bytes_received", "Bytes of message arrays a role received from other roles", tag_keys=TAGS
        )

    def call(self, endpoint: str, seconds: float, images: int) -> None:
        tags = self.tags | {"endpoint": endpoint}
        self.step_seconds.set(seconds, tags=tags)
        self.calls.inc(1.0, tags=tags)
        if images:
            self.images_per_second.set(images / max(seconds, 1e-9), tags=tags)

    def received(self, endpoint: str, size: int) -> None:
        """Count the array bytes of incoming messages."""
        if size:  # Ray's counters take positive increments only
            self.bytes_received.inc(float(size), tags=self.tags | {"endpoint": endpoint})
