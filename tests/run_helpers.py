"""Helpers shared by the tests: the tiny config pointed at the session's tiny teacher, free ports, one-rank worlds."""

from pathlib import Path

from orchestrator.config import DistillConfig
from orchestrator.config_loading import load_config

CONFIGS = Path(__file__).parents[1] / "jobs" / "configs"


def free_port() -> int:
    """A port free on 127.0.0.1 now, for a server that takes its port as a setting (Ray's dashboard, Prometheus)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tiny_config(root: Path, output: Path, *overrides: str) -> DistillConfig:
    """jobs/configs/tiny.yaml with the session's tiny teacher and data (`root`), writing to `output`."""
    return load_config(
        DistillConfig,
        CONFIGS / "tiny.yaml",
        [f"teacher={root / 'teacher'}", f"data={root / 'data'}", f"output={output}", *overrides],
    )


def one_rank_world() -> None:
    """Join a one-rank gloo world (call inside a Ray task; its worker process may have joined one already)."""
    import torch

    from workers.parallel.deepspeed import join_process_group, rendezvous_store

    if not torch.distributed.is_initialized():
        join_process_group(rendezvous_store(1, "127.0.0.1"), 0, 1, "cpu")


def scrape_metrics(prefix: str, until, timeout_s: float = 60) -> dict[str, list[str]]:
    """Sample lines of metrics named `prefix*` from every node's Prometheus endpoint, by name; polled
    until `until(found)` holds (Ray exports every few seconds, so values lag) or the timeout passes."""
    import time
    import urllib.request

    import ray

    deadline, found = time.monotonic() + timeout_s, {}
    while True:
        found = {}
        for node in (n for n in ray.nodes() if n["Alive"]):
            url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
            for line in urllib.request.urlopen(url, timeout=10).read().decode().splitlines():
                if line.startswith(prefix):
                    found.setdefault(line.split("{")[0], []).append(line)
        if until(found) or time.monotonic() > deadline:
            return found
        time.sleep(2)
