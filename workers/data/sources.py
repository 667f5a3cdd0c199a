"""Where data sets come from: scikit-learn's bundled digits, a folder of the user's own images."""

import csv
import json
from pathlib import Path

import numpy as np

from workers.data.shards import ImageArrays
from workers.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def digits_arrays() -> ImageArrays:
    """scikit-learn's bundled 8x8 digits (1,797 images, labels 0-9), scaled from [0, 16] to [-1, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images.astype(np.float32) / 8.0 - 1.0)[:, None]  # (N, 1, 8, 8)
    return ImageArrays(images=images, labels=digits.target.astype(np.int64))


# ---------------------------------------------------------------- a user's own image folder


def _load_image(file: Path, size: int, mode: str) -> np.ndarray:
    """One image as float32 (C, size, size) in [-1, 1]: centre-cropped square, then resized."""
    from PIL import Image, ImageOps

    try:
        with Image.open(file) as image:
            image = ImageOps.exif_transpose(image).convert(mode)  # phone photos store rotation in EXIF
            side = min(image.size)  # crop before resizing, so no pixel outside the square leaks in
            left, top = (image.width - side) // 2, (image.height - side) // 2
            image = image.crop((left, top, left + side, top + side))
            image = image.resize((size, size), Image.Resampling.BICUBIC)
            pixels = np.asarray(image, dtype=np.float32)  # (H, W) or (H, W, 3) in [0, 255]
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"cannot read image {file} ({error}): remove or replace the file") from None
    channels_first = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # (C, H, W)
    return channels_first / 127.5 - 1.0


def _read_mapping(file: Path, value_field: str) -> dict[str, str]:
    """`file -> value` from a CSV with header `file,<value_field>` or a JSONL of such objects."""
    if not file.is_file():
        raise DataError(f"{value_field} file {file} does not exist: fix the path")
    rows: list[dict] = []
    with open(file, newline="", encoding="utf-8") as stream:
        if file.suffix.lower() == ".csv":
            reader = csv.DictReader(stream)
            if not {"file", value_field} <= set(reader.fieldnames or []):
                raise DataError(
                    f"{file} has header {reader.fieldnames}, expected columns "
                    f"'file,{value_field}': add that header line"
                )
            rows = list(reader)
        elif file.suffix.lower() == ".jsonl":
            lines = [(number, line) for number, line in enumerate(stream, start=1) if line.strip()]
            for number, line in lines:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise DataError(
                        f"{file} line {number} is not JSON: write one "
                        f'{{"file": ..., "{value_field}": ...}} object per line'
                    ) from None
        else:
            raise DataError(f"{value_field} file {file} must end in .csv or .jsonl: rename or convert it")
    mapping: dict[str, str] = {}
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or not row.get("file") or row.get(value_field) is None:
            raise DataError(f"{file} row {number} lacks 'file' or '{value_field}': fill both in")
        if row["file"] in mapping:
            raise DataError(f"{file} names {row['file']} twice: keep one row per image")
        mapping[str(row["file"])] = str(row[value_field])
    return mapping


def _per_image(source: Path, value_field: str, keys: list[str], folder: Path) -> list[str]:
    """`source`'s values in the order of `keys`; every image needs a row and every row an image."""
    mapping = _read_mapping(source, value_field)
    missing = [key for key in keys if key not in mapping]
    if missing:
        raise DataError(
            f"{source} has no row for {len(missing)} image(s) in {folder}, e.g. "
            f"{missing[0]}: add a row for each image (paths relative to the folder)"
        )
    unknown = sorted(set(mapping) - set(keys))
    if unknown:
        raise DataError(
            f"{source} names {unknown[0]}, which is not an image in {folder}: "
            "fix the path (relative to the folder) or remove the row"
        )
    return [mapping[key] for key in keys]


def folder_arrays(
    folder: str | Path,
    size: int,
    channels: int = 3,
    labels_file: str | Path | None = None,
    captions_file: str | Path | None = None,
) -> ImageArrays:
    """A folder of images (searched recursively), optionally labelled and captioned, in memory.

    Labels are any strings; class ids number the distinct names in sorted order.
    """
    folder = Path(folder)
    if size < 1 or channels not in (1, 3):
        raise ConfigError(f"size {size} / channels {channels}: give a positive size and 1 or 3 channels")
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist: fix the --folder path")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(
            f"image folder {folder} holds no {'/'.join(IMAGE_SUFFIXES)} files: "
            "point --folder at the folder with the images"
        )
    keys = [file.relative_to(folder).as_posix() for file in files]
    mode = "L" if channels == 1 else "RGB"
    images = np.stack([_load_image(file, size, mode) for file in files])  # (N, C, size, size)
    labels, class_names, captions = None, None, None
    if labels_file is not None:
        names = _per_image(Path(labels_file), "label", keys, folder)
        class_names = sorted(set(names))
        class_ids = {name: index for index, name in enumerate(class_names)}
        labels = np.array([class_ids[name] for name in names], dtype=np.int64)  # (N,)
    if captions_file is not None:
        captions = _per_image(Path(captions_file), "caption", keys, folder)
    return ImageArrays(images.astype(np.float32, copy=False), labels, captions, class_names)


# ---------------------------------------------------------------- Fashion-MNIST (IDX files)

FASHION_MNIST_FOLDER = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's `dataset-fashion-mnist` package puts the original IDX files."""
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
IDX_UBYTE = 0x08  # the IDX type code of unsigned bytes, the only one the MNIST family uses


def read_idx(file: Path, ndim: int) -> np.ndarray:
    """An IDX file (gzipped or not) of unsigned bytes with `ndim` axes, checked against its own header."""
    import gzip
    import zlib

    try:
        opener = gzip.open if file.suffix == ".gz" else open
        with opener(file, "rb") as stream:
            raw = stream.read()
    except FileNotFoundError:
        raise DataError(f"{file} does not exist") from None
    except (OSError, EOFError, zlib.error) as error:  # a truncated or damaged gzip stream
        raise DataError(f"{file} is not a readable IDX file, corrupt or truncated ({error})") from None
    header = 4 + 4 * ndim
    if len(raw) < header or raw[:2] != b"\0\0" or raw[2] != IDX_UBYTE or raw[3] != ndim:
        got = raw[:4].hex() if len(raw) >= 4 else f"{len(raw)} bytes"
        raise DataError(
            f"{file} is not an IDX file of {ndim}-axis unsigned bytes (header {got}, expected "
            f"0000{IDX_UBYTE:02x}{ndim:02x}): point --folder at the original Fashion-MNIST files"
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(
            f"{file} is truncated or padded: its header promises {expected} values of shape "
            f"{list(shape)}, it holds {len(raw) - header}; reinstall the package or re-copy the file"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def fashion_mnist_arrays(
    split: str, folder: Path = FASHION_MNIST_FOLDER, size: int = 32, limit: int | None = None
) -> ImageArrays:
    """One split ("train": 60,000, "test": 10,000) of Fashion-MNIST, padded from 28x28 to `size` with the
    background (0, which becomes -1), scaled to [-1, 1]: images (N, 1, size, size), labels (N,), class names."""
    folder = Path(folder)
    image_file, label_file = (folder / name for name in FASHION_MNIST_FILES[split])
    missing = [file.name for file in (image_file, label_file) if not file.is_file()]
    if missing:
        raise DataError(
            f"Fashion-MNIST file {folder / missing[0]} not found: install it with "
            "`apt-get install dataset-fashion-mnist`, or pass --folder DIR holding the IDX files"
        )
    pixels, labels = read_idx(image_file, 3), read_idx(label_file, 1)  # (N, 28, 28), (N,)
    if len(pixels) != len(labels):
        raise DataError(
            f"{image_file} holds {len(pixels)} images but {label_file} {len(labels)} labels: "
            "they are not one split; reinstall the package"
        )
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise DataError(
            f"{label_file} holds label {int(labels.max())}, Fashion-MNIST has "
            f"{len(FASHION_MNIST_CLASSES)} classes: it is another data set"
        )
    side = pixels.shape[1]
    if pixels.shape[1] != pixels.shape[2] or size < side:
        raise DataError(
            f"{image_file} holds {pixels.shape[1]}x{pixels.shape[2]} images, which do not pad "
            f"to {size}x{size}: give --size of at least {side}"
        )
    pixels, labels = pixels[:limit], labels[:limit]
    before = (size - side) // 2
    padded = np.pad(pixels, ((0, 0), (before, size - side - before), (before, size - side - before)))  # (N, S, S)
    images = (padded.astype(np.float32) / 127.5 - 1.0)[:, None]  # (N, 1, S, S)
    return ImageArrays(images, labels.astype(np.int64), class_names=list(FASHION_MNIST_CLASSES))
