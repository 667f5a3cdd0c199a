"""Encode a captioned image data set once for a text-to-image teacher: VAE latents and a prompt table.

    python -m jobs.encode_latents --teacher runs/tiny/sd15-teacher --out runs/data/digits-sd15-latents
    python -m jobs.encode_latents --teacher DIR --data runs/data/my_images --out DIR [--caption-template "..."]

The source is a Parquet data set written by `jobs.prepare_data` (default: the bundled digits).
Captions come from its caption column; a data set with labels but no captions gets them from
--caption-template. The output is a latent data set (Parquet shards labelled by prompt index) with
the text embeddings of every distinct caption in `prompts.safetensors`: roles read them from there
instead of running text encoders at every step.
"""

import argparse
from pathlib import Path

from jobs.cli import run_main
from workers.data.shards import ImageArrays, read_arrays
from workers.data.sources import digits_arrays
from workers.errors import ConfigError, DataError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.encode_latents", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--teacher", type=Path, required=True, help="a diffusers pipeline folder in the SD 1.5 or SDXL layout"
    )
    parser.add_argument(
        "--data", type=Path, help="Parquet data set from jobs.prepare_data (default: the bundled digits)"
    )
    parser.add_argument("--out", type=Path, required=True, help="the latent data set folder to write")
    parser.add_argument(
        "--caption-template",
        default="a handwritten digit {label}",
        help="caption of a labelled image without a caption; {label} is its class name or id",
    )
    parser.add_argument("--rows-per-shard", type=int, default=1000)
    parser.add_argument("--overwrite", action="store_true", help="replace a data set already in --out")
    return parser


def captions_of(arrays: ImageArrays, template: str) -> list[str]:
    """One caption per image: its own, or the template filled with its class name (or id)."""
    if arrays.captions is not None:
        return list(arrays.captions)
    if arrays.labels is None:
        raise DataError(
            "the data set has neither captions nor labels, so there is nothing to prompt with: "
            "prepare it with --captions FILE (jobs.prepare_data)"
        )
    if "{label}" not in template:
        raise ConfigError(f"--caption-template {template!r} lacks {{label}}: every class would get the same prompt")
    names = arrays.class_names or [str(i) for i in range(arrays.num_classes)]
    return [template.format(label=names[label]) for label in arrays.labels]


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    from workers.models.folders import check_model_folder, layout_of
    from workers.models.pipelines import encode_data_set

    check_model_folder(args.teacher)
    if layout_of(args.teacher) == "pixels":
        raise ConfigError(
            f"--teacher {args.teacher} is a pixel-space teacher, which trains on images directly: "
            "jobs.encode_latents is for SD 1.5 / SDXL pipeline folders"
        )
    if list(args.out.glob("part-*.parquet")) and not args.overwrite:
        raise DataError(f"{args.out} already holds a data set: pass --overwrite to replace it, or choose another --out")
    arrays = digits_arrays() if args.data is None else read_arrays(args.data)
    if arrays.space != "pixels":
        raise DataError(f"--data {args.data} already holds latents: give the pixel data set it was encoded from")
    captions = captions_of(arrays, args.caption_template)
    print(
        f"encoding {len(arrays.images)} images and their {len(set(captions))} distinct captions with {args.teacher}",
        flush=True,
    )
    info, prompts = encode_data_set(
        args.teacher, arrays.images, captions, args.out, args.overwrite, args.rows_per_shard
    )
    print(f"wrote {info.num_rows} latents of shape {list(info.image_shape)} and {prompts} prompts to {args.out}")


if __name__ == "__main__":
    run_main(main)
