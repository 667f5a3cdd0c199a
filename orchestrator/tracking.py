"""MLflow tracking: where runs go, and metrics logged in batches off the hot path.

The tracking URI comes from MLFLOW_TRACKING_URI, else the config, else an embedded SQLite store
under runs/. One synchronous `log_metric` costs about 100 ms against a server here, so metrics are
buffered and sent with MLflow's asynchronous logging.
"""

import os
import re
from pathlib import Path

DEFAULT_STORE = Path("runs/mlflow.db")


def tracking_uri(configured: str | None = None) -> str:
    """MLFLOW_TRACKING_URI, else `configured`, else sqlite:///<abs path>/runs/mlflow.db."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured
    if uri:
        return uri
    DEFAULT_STORE.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{DEFAULT_STORE.resolve()}"


def redact(uri: str) -> str:
    """A tracking URI without credentials (user:password@), safe to print or log."""
    return re.sub(r"//[^/@]*@", "//***@", uri)


def run_params(config_dict: dict, uri: str) -> dict[str, str]:
    """A resolved config as MLflow params: flattened, values cut to MLflow's 500 characters, credentials redacted."""
    from orchestrator.config_loading import flatten

    params = {key: redact(value) if isinstance(value, str) and "://" in value else value for key, value in flatten(config_dict).items()}
    params["tracking.tracking_uri"] = redact(uri)
    return {key: str(value)[:500] for key, value in params.items()}


class MetricLogger:
    """Buffers metrics and sends them to one MLflow run every `every` calls, asynchronously."""

    def __init__(self, run_id: str, uri: str, every: int = 20):
        from mlflow import MlflowClient

        self.client, self.run_id, self.every = MlflowClient(uri), run_id, every
        self.pending: list = []

    def log(self, metrics: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(key, float(value), now, step) for key, value in metrics.items() if value is not None]
        if len(self.pending) >= self.every * max(len(metrics), 1):
            self.flush(wait=False)

    def flush(self, wait: bool = True) -> None:
        if self.pending:
            # MLflow caps a batch at 1000 metrics.
            for begin in range(0, len(self.pending), 1000):
                self.client.log_batch(self.run_id, metrics=self.pending[begin : begin + 1000], synchronous=False)
            self.pending = []
        if wait:
            import mlflow

            mlflow.flush_async_logging()
