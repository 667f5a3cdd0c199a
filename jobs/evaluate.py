"""Score generated images against real ones with the project's yardstick.

    python -m jobs.evaluate --samples samples.npz [--reference-points] [--json out.json]
    python -m jobs.evaluate --model runs/student [--steps 1] [--num 1000] [--seed 0]
    python -m jobs.evaluate --reference-points [--num 1000]   # only the reference rows
    python -m jobs.evaluate --data runs/data/fashion-mnist --model runs/fashion/student1 --fd-at 5000

--data is a prepared data set folder (default: the bundled digits). One with train/ and test/
sub-folders (Fashion-MNIST) trains the yardstick on train/ and compares with test/; its reference
rows are then N training images against the test set, at the same sample counts as the model.
See `workers/evaluation/quality.py` for what the metrics mean. The yardstick classifiers are
trained on first use (seconds for digits, minutes for Fashion-MNIST) and cached under --yardstick-cache.
"""

import argparse
import json
from pathlib import Path

import numpy as np

from jobs.cli import run_main
from workers.data.shards import ImageArrays
from workers.data.sources import digits_arrays
from workers.errors import DataError
from workers.evaluation.inception import check_inception_weights, inception_fid
from workers.evaluation.quality import ReferenceSet, evaluate_at_sizes, real_data_row, reference_points
from workers.evaluation.yardstick import DEFAULT_CACHE, load_or_train_yardstick


def load_reference(
    data_dir: Path | None, yardstick_cache: Path = DEFAULT_CACHE
) -> tuple[ReferenceSet, ImageArrays | None]:
    """The real images to compare with, on their yardstick, and the training split when there is one."""
    if data_dir is None:
        train, test = digits_arrays(), None
    else:
        from workers.data.shards import read_splits  # lazily: only needed for a user data set

        train, test = read_splits(Path(data_dir))
    yardstick = load_or_train_yardstick(train, test, yardstick_cache)
    return ReferenceSet(train if test is None else test, yardstick), None if test is None else train


def read_samples_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """`images` (K, C, H, W) and optional `labels` (K,) from an .npz file, without unpickling."""
    how = "write it with np.savez(path, images=..., labels=...)"
    if not path.is_file():
        raise DataError(f"samples file {path} not found; {how}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as error:  # not a zip, or object arrays that would need pickle
        raise DataError(f"cannot read {path} as a numeric .npz ({type(error).__name__}); {how}") from None
    if "images" not in arrays:
        raise DataError(f"{path} has no 'images' array (it has {sorted(arrays)}); {how}")
    images, labels = arrays["images"], arrays.get("labels")
    if images.ndim != 4:
        raise DataError(f"'images' in {path} has shape {images.shape}; it must be (K, C, H, W)")
    if labels is not None and labels.shape != (len(images),):
        raise DataError(f"'labels' in {path} has shape {labels.shape}; it must be ({len(images)},) like the images")
    return images.astype(np.float32), None if labels is None else labels.astype(np.int64)


def evaluate_samples(
    images: np.ndarray,
    labels: np.ndarray | None,
    data_dir: Path | None = None,
    inception_weights: Path | None = None,
    yardstick_cache: Path = DEFAULT_CACHE,
    num: int | None = None,
    fd_sizes: tuple[int, ...] = (),
) -> dict[str, float | None]:
    """The yardstick metrics of the first `num` (K, C, H, W) images in [-1, 1] (all by default) and the FD
    of the first N for each N in `fd_sizes`; with Inception FID if weights are given."""
    if inception_weights is not None:
        check_inception_weights(inception_weights)
    reference, _ = load_reference(data_dir, yardstick_cache)
    metrics = evaluate_at_sizes(images, labels, reference, num or len(images), fd_sizes)
    if inception_weights is not None:
        metrics["inception_fid"] = inception_fid(images, reference.arrays.images, Path(inception_weights))
    return metrics


def format_value(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2e}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"


def format_table(columns: dict[str, dict[str, float | None]]) -> str:
    """Metrics as rows and each named result set as a column, right-aligned."""
    metrics = list(dict.fromkeys(metric for column in columns.values() for metric in column))
    header = ["metric", *columns]
    body = [[metric, *(format_value(column.get(metric)) for column in columns.values())] for metric in metrics]
    rows = [header, *body]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    # The metric name is left-aligned, numbers right-aligned so their digits line up.
    lines = [
        "  ".join([row[0].ljust(widths[0]), *(cell.rjust(width) for cell, width in zip(row[1:], widths[1:]))])
        for row in rows
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.evaluate", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--samples", type=Path, help=".npz with 'images' (K,C,H,W) in [-1,1] and optional 'labels'")
    source.add_argument("--model", type=Path, help="a model folder to sample from")
    parser.add_argument("--steps", type=int, help="sampler steps for --model (default: the model's own)")
    parser.add_argument(
        "--num", type=int, default=1000, help="images to sample and score (or per reference row, alone)"
    )
    parser.add_argument(
        "--fd-at",
        type=int,
        action="append",
        default=[],
        metavar="N",
        help="also the FD of N images (sampled or read beyond --num), e.g. --fd-at 5000",
    )
    parser.add_argument(
        "--sampler", choices=["ddim", "dpm_solver"], default="ddim", help="a teacher's sampler for --model"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for sampling and the reference points")
    parser.add_argument("--data", type=Path, help="a Parquet data set folder (default: the bundled digits)")
    parser.add_argument("--inception-weights", type=Path, help="local Inception v3 weights for classic FID")
    parser.add_argument("--reference-points", action="store_true", help="also score known image sets")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--yardstick-cache", type=Path, default=DEFAULT_CACHE, help="yardstick folder")
    args = parser.parse_args(argv)
    if args.samples is None and args.model is None and not args.reference_points:
        parser.error("pass --samples FILE.npz or --model DIR (or only --reference-points)")
    if args.num < 1 or any(n < 1 for n in args.fd_at):
        parser.error("--num and --fd-at must be at least 1")
    return args


def score_source(args: argparse.Namespace) -> dict:
    """The metrics of --samples or of images sampled from --model, with where they came from."""
    if args.inception_weights is not None:
        check_inception_weights(args.inception_weights)  # before sampling, which can take a while
    seconds_per_image = None
    if args.samples is not None:
        images, labels = read_samples_npz(args.samples)
    else:
        from jobs.sample import sample_from_folder  # lazily: it pulls in the model stack

        result = sample_from_folder(
            args.model, args.steps, max([args.num, *args.fd_at]), args.seed, sampler=args.sampler
        )
        images, labels, seconds_per_image = result.images, result.labels, result.seconds_per_image
    metrics = evaluate_samples(
        images,
        labels,
        args.data,
        args.inception_weights,
        args.yardstick_cache,
        args.num if args.model is not None else None,
        tuple(args.fd_at),
    )
    if seconds_per_image is not None:
        metrics["seconds_per_image"] = seconds_per_image
    return {"source": str(args.samples or args.model), "num_images": len(images), "metrics": metrics}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    results: dict = {}
    columns: dict[str, dict] = {}
    if args.samples is not None or args.model is not None:
        results = score_source(args)
        columns["value"] = results["metrics"]
    if args.reference_points:
        # As many images as were evaluated, so the reference rows share their sample-size bias.
        num = min(results.get("num_images", args.num), args.num)
        reference, train = load_reference(args.data, args.yardstick_cache)
        if train is None:
            results["reference_points"] = reference_points(reference, num, args.seed)
        else:  # a test split: the floor is as many training images against it
            results["reference_points"] = {
                "real_train_images": real_data_row(train, reference, num, args.seed, tuple(args.fd_at))
            }
        columns |= results["reference_points"]
    print(format_table(columns))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    run_main(main)
