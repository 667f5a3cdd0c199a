"""Prepare a data set as Parquet shards: the bundled digits, Fashion-MNIST, or a folder of the user's own images.

    python -m jobs.prepare_data                                   # digits -> runs/data/digits
    python -m jobs.prepare_data --source fashion-mnist            # -> runs/data/fashion-mnist/{train,test}
    python -m jobs.prepare_data --source folder --folder imgs --size 64 --labels labels.csv

Fashion-MNIST is read from the original IDX files that `apt-get install dataset-fashion-mnist`
puts in /usr/share/datasets/fashion-mnist (--folder elsewhere), padded from 28x28 to --size 32
with the background, its train and test splits written to OUT/train and OUT/test.

Re-running onto a folder that already holds the same data is a no-op (so `make demo` can
always call it); a folder holding different data is only replaced with --overwrite.
"""

import argparse
from pathlib import Path

import numpy as np

from jobs.cli import run_main
from workers.data.shards import ImageArrays, read_arrays, read_info, write_shards
from workers.data.sources import FASHION_MNIST_FOLDER, digits_arrays, fashion_mnist_arrays, folder_arrays
from workers.errors import ConfigError, DataError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.prepare_data", description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=["digits", "fashion-mnist", "folder"], default="digits")
    parser.add_argument(
        "--folder",
        type=Path,
        help="image folder (searched recursively) for --source folder; "
        f"the IDX files for --source fashion-mnist (default {FASHION_MNIST_FOLDER})",
    )
    parser.add_argument("--labels", type=Path, help="CSV with header file,label")
    parser.add_argument("--captions", type=Path, help="CSV file,caption or JSONL {file, caption}")
    parser.add_argument(
        "--size", type=int, help="output height and width in pixels (--source folder; fashion-mnist: 32)"
    )
    parser.add_argument("--channels", type=int, choices=[1, 3], default=3, help="1 = grey, 3 = RGB")
    parser.add_argument("--out", type=Path, help="output folder (default runs/data/<source name>)")
    parser.add_argument("--rows-per-shard", type=int, default=1000)
    parser.add_argument("--overwrite", action="store_true", help="replace a different data set in --out")
    return parser


def _source_arrays(args: argparse.Namespace) -> dict[str, ImageArrays]:
    """The data sets to write, by sub-folder of --out ("" for --out itself)."""
    if args.source == "fashion-mnist":
        if args.labels or args.captions:
            raise ConfigError("--labels/--captions only apply to --source folder: Fashion-MNIST brings its own labels")
        folder, size = args.folder or FASHION_MNIST_FOLDER, args.size or 32
        return {split: fashion_mnist_arrays(split, folder, size) for split in ("train", "test")}
    if args.source == "digits":
        if args.folder or args.labels or args.captions or args.size:
            raise ConfigError(
                "--folder/--labels/--captions/--size only apply to --source folder: drop them or add --source folder"
            )
        return {"": digits_arrays()}
    if args.folder is None or args.size is None:
        raise ConfigError(
            "--source folder needs --folder DIR and --size N: e.g. `--source folder --folder my_images --size 64`"
        )
    return {"": folder_arrays(args.folder, args.size, args.channels, args.labels, args.captions)}


def _same_data(a: ImageArrays, b: ImageArrays) -> bool:
    """Whether two data sets hold the same rows in the same order (shard layout aside)."""
    labels_equal = (a.labels is None) == (b.labels is None) and (a.labels is None or np.array_equal(a.labels, b.labels))
    return (
        a.images.shape == b.images.shape
        and np.array_equal(a.images, b.images)
        and labels_equal
        and a.captions == b.captions
        and a.class_names == b.class_names
    )


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.rows_per_shard < 1:
        raise ConfigError(f"--rows-per-shard is {args.rows_per_shard}: give a positive number of rows")
    out = args.out or Path("runs/data") / (args.folder.name if args.source == "folder" else args.source)
    for part, arrays in _source_arrays(args).items():
        write_data_set(arrays, out / part if part else out, args)


def write_data_set(arrays: ImageArrays, out: Path, args: argparse.Namespace) -> None:
    """Write one data set to `out`, unless it already holds exactly this data."""
    shape = tuple(arrays.images.shape[1:])
    summary = f"{len(arrays.images)} rows of shape {shape}, {arrays.num_classes} classes, " + (
        "captions" if arrays.captions is not None else "no captions"
    )
    if list(out.glob("part-*.parquet")) and not args.overwrite:
        if not _same_data(read_arrays(out), arrays):
            raise DataError(
                f"output folder {out} already holds a different data set: pass "
                "--overwrite to replace it, or choose another --out"
            )
        print(f"{out} already holds this data set ({summary}); nothing to do")
        return
    files = write_shards(arrays, out, rows_per_shard=args.rows_per_shard, overwrite=args.overwrite)
    read_info(out)  # read back what was written, so a bad write fails here and not in training
    print(f"wrote {summary} to {out}")
    names = files[0].name if len(files) == 1 else f"{files[0].name} .. {files[-1].name}"
    print(f"  {len(files)} shard(s): {names}")


if __name__ == "__main__":
    run_main(main)
