"""MLflow metrics logged in batches, off the hot path: one synchronous `log_metric` costs about 100 ms
against a server, so metrics are buffered and sent with MLflow's asynchronous logging. Used by the
driver and by teacher-training workers alike."""


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
