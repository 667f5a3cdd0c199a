"""The Grafana dashboard against a real Prometheus scraping a real Ray cluster while the tiny job trains:
every panel's PromQL must return series for the run. Needs Debian's `prometheus` (`.ci/run` installs it)."""

import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.run_helpers import free_port, tiny_config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "dashboards"))
import build as dashboard_build  # noqa: E402  (dashboards/build.py, not a package)

PROMETHEUS = shutil.which("prometheus")


def test_the_dashboard_json_is_current_and_has_what_grafana_needs():
    result = subprocess.run(
        [sys.executable, "dashboards/build.py", "--check"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    board = json.loads((REPO / "dashboards" / "flashdistill.json").read_text())
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 30
    names = {v["name"] for v in board["templating"]["list"]}
    assert {"run", "datasource"} <= names
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])  # ids unique
    for panel in panels:
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"} and panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["refId"] and target["expr"] and target["datasource"]["uid"] == "${datasource}"
    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    assert rows == ["Run overview", "Role: teacher", "Role: critic", "Role: generator"]


def query(url: str, expr: str) -> list:
    with urllib.request.urlopen(f"{url}/api/v1/query?query={urllib.parse.quote(expr)}", timeout=10) as response:
        answer = json.loads(response.read())
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


@pytest.fixture
def prometheus(ray_cluster, tmp_path):
    """Prometheus on 127.0.0.1, scraping every node listed in Ray's service discovery file each second."""
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed: apt-get install prometheus (.ci/run does)")
    discovery = Path(ray_cluster.head_node.get_session_dir_path()) / "prom_metrics_service_discovery.json"
    deadline = time.monotonic() + 60
    while not discovery.is_file() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert discovery.is_file(), f"Ray wrote no service discovery file at {discovery}"
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "ray", "file_sd_configs": [{"files": [str(discovery)], "refresh_interval": "1s"}]}
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{free_port()}"
    server = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address={url.removeprefix('http://')}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                urllib.request.urlopen(f"{url}/-/ready", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline + 60, "prometheus did not start"
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_every_panel_query_returns_series_for_a_running_job(prometheus, tiny_teacher, tmp_path, monkeypatch):
    from orchestrator.distill import distill

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = "dashboard-run"
    expressions = [
        (title, expr.replace("$run", run)) for title, expr in dashboard_build.expressions(dashboard_build.dashboard())
    ]
    answered: dict[str, int] = {}
    done = threading.Event()

    def poll() -> None:  # while the job trains, and a little after (Ray exports every few seconds)
        while not done.is_set():
            for title, expr in expressions:
                if expr not in answered and query(prometheus, expr):
                    answered[expr] = len(query(prometheus, expr))
            time.sleep(1)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    overrides = ["generator_steps=16", "log_every=1", "eval_every=4", "eval_num=50", "checkpoint_every=0"]
    distill(tiny_config(tiny_teacher, tmp_path / run, *overrides))
    deadline = time.monotonic() + 30
    while len(answered) < len(expressions) and time.monotonic() < deadline:
        time.sleep(1)
    done.set()
    poller.join()
    silent = [f"{title}: {expr}" for title, expr in expressions if expr not in answered]
    assert silent == [], "panel queries that returned nothing for the run:\n" + "\n".join(silent)
