"""Sample a model folder this project saved (teacher or student) into an .npz and a PNG grid.

python -m jobs.sample --model runs/demo/teacher --steps 50 --num 1000 --seed 0 --out samples.npz --grid grid.png
"""

import argparse
from pathlib import Path

import numpy as np

from jobs.cli import run_main
from workers.errors import UserError
from workers.evaluation.grids import save_grid
from workers.models.inference import SampleResult, sample_from_folder

__all__ = ["sample_from_folder", "SampleResult", "main"]


def main(argv: list[str] | None = None) -> SampleResult:
    parser = argparse.ArgumentParser(prog="python -m jobs.sample", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, required=True, help="model folder saved by jobs.train_teacher or jobs.distill"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="sampler steps (teachers: DDIM steps; students: their trained count, the default)",
    )
    parser.add_argument("--num", type=int, default=100, help="number of images (classes balanced)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--guidance", type=float, default=None, help="classifier-free guidance scale (default: the model's own)"
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--out", type=Path, required=True, help=".npz with images (K,C,H,W) float32 in [-1,1] and labels (K,)"
    )
    parser.add_argument("--grid", type=Path, default=None, help="optional PNG grid of the samples")
    args = parser.parse_args(argv)
    if args.num < 1:
        raise UserError(f"--num {args.num}: ask for at least one image")
    if args.out.suffix != ".npz":
        raise UserError(f"--out {args.out}: the output is a NumPy archive, give a path ending in .npz")
    result = sample_from_folder(args.model, args.steps, args.num, args.seed, args.batch_size, args.guidance)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"images": result.images} | ({} if result.labels is None else {"labels": result.labels})
    np.savez(args.out, **arrays)
    if args.grid:
        save_grid(result.images, args.grid)
    print(
        f"wrote {len(result.images)} images to {args.out} ({result.seconds_per_image * 1000:.2f} ms/image, "
        f"{result.network_passes} network passes each)"
    )
    return result


if __name__ == "__main__":
    run_main(main)
