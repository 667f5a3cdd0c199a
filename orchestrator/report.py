"""Reports the jobs share: Markdown tables of evaluated rows, and timed stages."""

import time
from pathlib import Path

DIGITS_COLUMNS = [
    ("fd", "FD", "{:.2f}"),
    ("fd_mlp", "FD (MLP)", "{:.2f}"),
    ("fd_pixels", "FD (pixels)", "{:.2f}"),
    ("class_accuracy", "class acc.", "{:.3f}"),
    ("precision", "precision", "{:.3f}"),
    ("recall", "recall", "{:.3f}"),
    ("network_passes", "passes", "{:.0f}"),
    ("seconds_per_image", "ms/image", "{:.3f}"),
]
"""The digits table: three feature spaces."""
BENCHMARK_COLUMNS = [
    ("fd", "FD (1k)", "{:.2f}"),
    ("fd_5000", "FD (5k)", "{:.2f}"),
    ("precision", "precision", "{:.3f}"),
    ("recall", "recall", "{:.3f}"),
    ("class_accuracy", "class acc.", "{:.3f}"),
    ("network_passes", "NFE", "{:.0f}"),
    ("seconds_per_image", "ms/image", "{:.3f}"),
    ("train_seconds", "training", "{:.0f} s"),
]
"""A benchmark's table: FD at two sample counts, coverage, speed and the cost of training."""


def format_table(rows: list[dict], first: str = "model", columns: list[tuple[str, str, str]] = DIGITS_COLUMNS) -> str:
    """One Markdown row per evaluated model; the `first` column names it. A row's `fd_std` (a mean over
    sampling seeds) is shown beside its FD."""
    columns = [(first, first, "{}"), *columns]
    lines = ["| " + " | ".join(title for _, title, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        values = [
            fmt.format(row[key] * 1000 if key == "seconds_per_image" else row[key]) if row.get(key) is not None else "-"
            for key, _, fmt in columns
        ]
        if row.get("fd_std") is not None:  # a mean over sampling seeds: show its spread
            values[1] += f" ± {row['fd_std']:.2f}"
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines)


class timed:
    """`with timed(timings, "stage"):` records the stage's seconds and prints them."""

    def __init__(self, timings: dict, name: str, tag: str = "demo"):
        self.timings, self.name, self.tag = timings, name, tag

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        self.timings[self.name] = time.perf_counter() - self.start
        print(f"[{self.tag}] {self.name}: {self.timings[self.name]:.0f}s", flush=True)


CURVES = [
    ("losses of the generator", ("generator/dm_loss", "generator/srl_loss", "generator/gan_loss")),
    ("losses of the critic", ("critic/denoising_loss", "critic/discriminator_loss")),
    ("FD of the exported student (lower is better)", ("eval/fd",)),
]
"""The training-curve plot's panels and the MLflow metrics on each."""


def training_curves(uri: str, run_id: str, path: Path) -> Path | None:
    """A PNG of a run's loss curves and FD over generator steps, from its MLflow metric history (so a
    resumed run's curve is whole); None when the run logged none of them."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    panels = [(title, {key: client.get_metric_history(run_id, key) for key in keys}) for title, keys in CURVES]
    panels = [(title, {key: history for key, history in series.items() if history}) for title, series in panels]
    panels = [(title, series) for title, series in panels if series]
    if not panels:
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.2), squeeze=False)
    for axis, (title, series) in zip(axes[0], panels):
        for key, history in series.items():
            points = sorted((m.step, m.value) for m in history)
            axis.plot(
                [s for s, _ in points],
                [v for _, v in points],
                marker="o" if len(points) < 20 else None,
                markersize=3,
                label=key.split("/", 1)[1],
            )
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("generator step")
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
