"""What the demo and the ablation share: a Markdown table of evaluated rows, and timed stages."""

import time


def format_table(rows: list[dict], first: str = "model") -> str:
    """One Markdown row per evaluated model; the `first` column names it."""
    columns = [(first, first, "{}"), ("fd", "FD", "{:.2f}"), ("fd_mlp", "FD (MLP)", "{:.2f}"), ("fd_pixels", "FD (pixels)", "{:.2f}"),
               ("class_accuracy", "class acc.", "{:.3f}"), ("precision", "precision", "{:.3f}"), ("recall", "recall", "{:.3f}"),
               ("network_passes", "passes", "{:.0f}"), ("seconds_per_image", "ms/image", "{:.3f}")]
    lines = ["| " + " | ".join(title for _, title, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        values = [fmt.format(row[key] * 1000 if key == "seconds_per_image" else row[key]) if row.get(key) is not None else "-" for key, _, fmt in columns]
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
