"""MLflow tracking: where runs go, and a run's params.

The tracking URI comes from MLFLOW_TRACKING_URI, else the config, else an embedded SQLite store
under runs/. Metrics go through `workers.metric_logger.MetricLogger` (batched, asynchronous).
"""

import os
import re
from contextlib import contextmanager
from pathlib import Path

DEFAULT_STORE = Path("runs/mlflow.db")


def tracking_uri(configured: str | None = None) -> str:
    """MLFLOW_TRACKING_URI, else `configured`, else sqlite:///<abs path>/runs/mlflow.db."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured
    if uri:
        return uri
    DEFAULT_STORE.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{DEFAULT_STORE.resolve()}"


def use_tracking_uri(configured: str | None = None) -> str:
    """Point MLflow at `tracking_uri(configured)` for this process and return it.

    mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI to the process environment, where
    `tracking_uri` takes it for the user's: then the first job of a process (a teacher made on first
    use, a demo's teacher) would decide the store of every later one, whatever their configs say.
    The environment is put back as it was."""
    import mlflow

    uri, before = tracking_uri(configured), os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
    return uri


def redact(uri: str) -> str:
    """A tracking URI without credentials (user:password@), safe to print or log."""
    return re.sub(r"//[^/@]*@", "//***@", uri)


def run_params(config_dict: dict, uri: str) -> dict[str, str]:
    """A resolved config as MLflow params: flattened, values cut to MLflow's 500 characters, credentials redacted."""
    from orchestrator.config_loading import flatten

    params = {
        key: redact(value) if isinstance(value, str) and "://" in value else value
        for key, value in flatten(config_dict).items()
    }
    params["tracking.tracking_uri"] = redact(uri)
    return {key: str(value)[:500] for key, value in params.items()}


@contextmanager
def local_server(root: Path, timeout_s: float = 120):
    """`mlflow server` on 127.0.0.1 over a SQLite store and artifact folder in `root`; yields its URI
    once it answers /health, and stops it on exit (tests and benchmarks; users start their own)."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{Path(root) / 'server.db'}",
            "--artifacts-destination",
            str(Path(root) / "artifacts"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # Without MLflow's server-side jobs, which nothing here submits: they would start five more processes.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server on {uri} did not come up within {timeout_s:.0f} s") from None
                time.sleep(1)
        yield uri
    finally:
        server.terminate()
        server.wait(timeout=30)
