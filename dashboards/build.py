"""Write dashboards/flashdistill.json, the Grafana dashboard of distillation runs, from the panels below.

    python dashboards/build.py           # rewrite the JSON
    python dashboards/build.py --check   # exit 1 when it is stale (the test suite runs this check)

One row gives the run overview (progress and ETA, losses, FD over steps, the TTUR ratio, waiting
per role, throughput), then one row per role. A `run` variable picks runs by their tag; a
`datasource` variable picks the Prometheus data source, so the file imports into any Grafana.
Every panel's PromQL is checked against a real Prometheus by tests/test_dashboards.py.
"""

import argparse
import json
import sys
from pathlib import Path

OUTPUT = Path(__file__).resolve().parent / "flashdistill.json"
RUN = 'run=~"$run"'
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def m(name: str, *selectors: str) -> str:
    """A Ray-exported metric of this project, for the chosen runs."""
    return f"ray_flashdistill_{name}{{{', '.join((RUN, *selectors))}}}"


# (title, unit, [(PromQL, legend)]) per panel; a row per role after the overview.
GENERATOR, CRITIC, FD, ACCURACY = 'role="generator"', 'role="critic"', 'metric="fd"', 'metric="class_accuracy"'
OVERVIEW = [
    (
        "Progress",
        "percentunit",
        [(f"max by (run) ({m('generator_steps')}) / max by (run) ({m('generator_steps_target')})", "{{run}}")],
    ),
    (
        "ETA",
        "s",
        [
            (
                f"(max by (run) ({m('generator_steps_target')}) - max by (run) ({m('generator_steps')})) "
                f"* max by (run) ({m('cycle_seconds')})",
                "{{run}}",
            )
        ],
    ),
    ("Generator losses", "none", [(f"max by (run, term) ({m('loss', GENERATOR)})", "{{run}} {{term}}")]),
    ("Critic losses", "none", [(f"max by (run, term) ({m('loss', CRITIC)})", "{{run}} {{term}}")]),
    ("FD of the student (lower is better)", "none", [(f"max by (run) ({m('eval', FD)})", "{{run}}")]),
    ("Class accuracy of the student", "percentunit", [(f"max by (run) ({m('eval', ACCURACY)})", "{{run}}")]),
    (
        "Critic updates per generator update (measured)",
        "none",
        [(f"max by (run) ({m('critic_updates_per_generator_update')})", "{{run}}")],
    ),
    (
        "Waiting for other roles (fraction of a cycle)",
        "percentunit",
        [
            (
                f"max by (run, role) ({m('role_wait_seconds')})"
                f" / on (run) group_left max by (run) ({m('cycle_seconds')})",
                "{{run}} {{role}}",
            )
        ],
    ),
    ("Throughput (generator steps per second)", "none", [(f"1 / max by (run) ({m('cycle_seconds')})", "{{run}}")]),
    (
        "Skipped cycles and restarts",
        "none",
        [
            (f"max by (run) ({m('skipped_cycles')})", "{{run}} skipped cycles"),
            (f"max by (run) ({m('restarts')})", "{{run}} restarts"),
        ],
    ),
]


def role_panels(role: str) -> list:
    selector = f'role="{role}"'
    return [
        (
            f"{role}: seconds per call",
            "s",
            [(f"max by (run, endpoint) ({m('step_seconds', selector)})", "{{run}} {{endpoint}}")],
        ),
        (
            f"{role}: images per second",
            "none",
            [(f"max by (run, endpoint) ({m('images_per_second', selector)})", "{{run}} {{endpoint}}")],
        ),
        (
            f"{role}: calls per second",
            "none",
            [(f"sum by (run, endpoint) (rate({m('calls_total', selector)}[1m]))", "{{run}} {{endpoint}}")],
        ),
        (
            f"{role}: bytes received per second",
            "Bps",
            [(f"sum by (run, endpoint) (rate({m('bytes_received_total', selector)}[1m]))", "{{run}} {{endpoint}}")],
        ),
        (
            f"{role}: compute and waiting per cycle",
            "s",
            [
                (f"max by (run) ({m('role_compute_seconds', selector)})", "{{run}} compute"),
                (f"max by (run) ({m('role_wait_seconds', selector)})", "{{run}} waiting"),
            ],
        ),
    ]


ROWS = [("Run overview", OVERVIEW)] + [
    (f"Role: {role}", role_panels(role)) for role in ("teacher", "critic", "generator")
]


def panel(panel_id: int, title: str, unit: str, queries: list, x: int, y: int) -> dict:
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": title,
        "datasource": DATASOURCE,
        "gridPos": {"h": 7, "w": 8, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(queries)
        ],
    }


def dashboard() -> dict:
    panels, y, panel_id = [], 0, 1
    for title, row in ROWS:
        panels.append(
            {
                "id": panel_id,
                "type": "row",
                "title": title,
                "collapsed": False,
                "panels": [],
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
            }
        )
        panel_id, y = panel_id + 1, y + 1
        for index, (name, unit, queries) in enumerate(row):
            panels.append(panel(panel_id, name, unit, queries, 8 * (index % 3), y + 7 * (index // 3)))
            panel_id += 1
        y += 7 * -(-len(row) // 3)
    variables = [
        {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus", "current": {}},
        {
            "name": "run",
            "label": "run",
            "type": "query",
            "datasource": DATASOURCE,
            "refresh": 2,
            "multi": True,
            "includeAll": True,
            "allValue": ".*",
            "current": {"text": "All", "value": "$__all"},
            "definition": "label_values(ray_flashdistill_generator_steps, run)",
            "query": {"query": "label_values(ray_flashdistill_generator_steps, run)", "refId": "run"},
        },
    ]
    return {
        "uid": "flashdistill-runs",
        "title": "flashdistill: distillation runs",
        "tags": ["flashdistill", "ray"],
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "templating": {"list": variables},
        "annotations": {"list": []},
        "panels": panels,
    }


def expressions(board: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target in a dashboard."""
    return [(p["title"], t["expr"]) for p in board["panels"] if p["type"] != "row" for t in p["targets"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when flashdistill.json is stale")
    text = json.dumps(dashboard(), indent=2) + "\n"
    if parser.parse_args().check:
        if not OUTPUT.is_file() or OUTPUT.read_text() != text:
            sys.exit(f"{OUTPUT.name} is stale: run `python dashboards/build.py`")
        return
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
