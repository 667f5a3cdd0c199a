"""What MLflow logging costs the driver per generator step, against the step time.

    python bench/mlflow_overhead.py [--logs 300] [--log-every 10] [--step-seconds 1.30] [--server]

The driver logs one metrics dict every `log_every` generator steps through
`orchestrator.tracking.MetricLogger` (buffered, sent with MLflow's asynchronous batch logging).
This times `--logs` such calls with the metric keys of a digits run (losses, gradient norms, the
sample mean and std, per-role seconds), plus the final flush, into a fresh SQLite store or, with
`--server`, a real `mlflow server` on 127.0.0.1. The cost per generator step is that time divided
by logs x log_every; `--step-seconds` is the measured cycle time it is compared with
(bench/cycle_overhead.py at the digits default's batch 64: 1.26-1.34 s).
"""

import argparse
import json
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

# The keys a digits run logs each time (generator, critic, guard and per-role seconds).
KEYS = [
    f"generator/{k}"
    for k in (
        "dm_loss",
        "gan_loss",
        "grad_norm",
        "lr",
        "sample_mean",
        "sample_std",
        "skipped_steps",
        "steps_per_second",
        "update_seconds",
        "generate_seconds",
    )
]
KEYS += [
    f"critic/{k}"
    for k in (
        "denoising_loss",
        "discriminator_loss",
        "grad_norm",
        "logits_fake",
        "logits_real",
        "skipped_steps",
        "train_step_seconds",
        "feedback_seconds",
    )
]
KEYS += ["teacher/dm_x0_seconds", "guard/skipped_cycles", "restarts"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", type=int, default=300)
    parser.add_argument("--log-every", type=int, default=10, help="generator steps per log (digits.yaml: 10)")
    parser.add_argument("--step-seconds", type=float, default=1.30)
    parser.add_argument(
        "--server", action="store_true", help="log to a real mlflow server on 127.0.0.1 instead of SQLite"
    )
    args = parser.parse_args()

    import mlflow

    from orchestrator.tracking import local_server
    from workers.metric_logger import MetricLogger

    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        root = Path(tmp)
        uri = stack.enter_context(local_server(root)) if args.server else f"sqlite:///{root / 'mlflow.db'}"
        client = mlflow.MlflowClient(uri)
        run_id = client.create_run(client.create_experiment("overhead")).info.run_id
        logger = MetricLogger(run_id, uri)
        start = time.perf_counter()
        for i in range(args.logs):
            logger.log({key: float(i) for key in KEYS}, step=i * args.log_every)
        logger.flush()
        seconds = time.perf_counter() - start
        logged = len(client.get_metric_history(run_id, "generator/dm_loss"))
    per_step = seconds / (args.logs * args.log_every)
    result = {
        "store": "server" if args.server else "sqlite",
        "logs": args.logs,
        "metrics_per_log": len(KEYS),
        "log_every": args.log_every,
        "seconds_total": seconds,
        "ms_per_log": 1e3 * seconds / args.logs,
        "ms_per_generator_step": 1e3 * per_step,
        "percent_of_step": 100 * per_step / args.step_seconds,
        "history_points_stored": logged,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
