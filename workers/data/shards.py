"""Image data sets: the in-memory form every part of the project shares, and its Parquet shards on disk.

In memory a data set is an `ImageArrays`: images float32 (N, C, H, W) in [-1, 1], labels int64
(N,) or None, captions list[str] or None. On disk it is a folder of Parquet shards
`part-00000.parquet`, `part-00001.parquet`, ... with these columns:

- `image`: fixed_size_list<float32>[C*H*W], the image flattened C-major (as `images[i].ravel()`).
- `label`: int64, nullable; all null when the data set has no labels.
- `caption`: string, nullable; all null when the data set has no captions.

and these schema metadata keys (values are UTF-8 bytes), identical in every shard:

- `flashdistill.format_version`: "1"
- `flashdistill.image_shape`: JSON "[C, H, W]"
- `flashdistill.num_classes`: "0" when unlabelled
- `flashdistill.has_captions`: "true" or "false"
- `flashdistill.class_names`: JSON list of names (optional; only when labels came with names)
- `flashdistill.space`: "pixels" (optional; the default) or "latents": a VAE's scaled latents
  (`jobs.encode_latents`), which are not bounded to [-1, 1]; their labels index the captions'
  prompts (`class_names`), whose text embeddings sit beside the shards in `prompts.safetensors`.
"""

import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from workers.errors import ConfigError, DataError

FORMAT_VERSION = "1"
KEY_VERSION = b"flashdistill.format_version"
KEY_SHAPE = b"flashdistill.image_shape"
KEY_NUM_CLASSES = b"flashdistill.num_classes"
KEY_HAS_CAPTIONS = b"flashdistill.has_captions"
KEY_CLASS_NAMES = b"flashdistill.class_names"
KEY_SPACE = b"flashdistill.space"
SPACES = ("pixels", "latents")
SHARD_GLOB = "part-*.parquet"
RANGE_TOLERANCE = 1e-3  # float rounding in a user's own scaling; values are clipped to [-1, 1] on write
PREPARE_HINT = "re-create it with `python -m jobs.prepare_data --out {path} --overwrite`"


@dataclass
class ImageArrays:
    images: np.ndarray  # (N, C, H, W) float32 in [-1, 1]
    labels: np.ndarray | None = None  # (N,) int64 class ids, or None
    captions: list[str] | None = None  # N captions, or None
    class_names: list[str] | None = None  # name of each class id, or None
    space: str = "pixels"  # or "latents" (not bounded to [-1, 1])

    @property
    def num_classes(self) -> int:
        if self.class_names is not None:  # a subset may lack the last class; the names do not
            return len(self.class_names)
        return 0 if self.labels is None else int(self.labels.max()) + 1


@dataclass
class DatasetInfo:
    image_shape: tuple[int, int, int]  # (C, H, W)
    num_rows: int
    num_classes: int  # 0 when unlabelled
    has_captions: bool
    files: list[Path]  # the shards, in order
    class_names: list[str] | None = None
    space: str = "pixels"


# ---------------------------------------------------------------- writing


def _checked(arrays: ImageArrays) -> ImageArrays:
    """The arrays in their on-disk dtypes, or a DataError naming the first problem."""
    images = arrays.images
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.dtype != np.float32:
        got = f"{type(images).__name__} {getattr(images, 'dtype', '')} {getattr(images, 'shape', '')}"
        raise DataError(
            f"images must be a float32 array (N, C, H, W), got {got}: convert them with "
            "`images.astype(np.float32)` and add the channel axis"
        )
    n = len(images)
    if n == 0 or 0 in images.shape:
        raise DataError(f"images have shape {images.shape}, which holds no pixels: give at least one image")
    if not np.isfinite(images).all():
        raise DataError("images contain NaN or infinity: fix the source images or their scaling")
    if arrays.space not in SPACES:
        raise DataError(f"space is {arrays.space!r}: use one of {', '.join(SPACES)}")
    low, high = float(images.min()), float(images.max())
    bounded = arrays.space == "pixels"  # latents are unbounded: nothing to check or clip
    if bounded and (low < -1 - RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE):
        raise DataError(
            f"image values span [{low:.3g}, {high:.3g}], expected [-1, 1]: scale pixels "
            "as `x / 127.5 - 1` for 8-bit images"
        )
    labels = arrays.labels
    if labels is not None:
        if labels.shape != (n,) or labels.dtype.kind not in "iu":
            raise DataError(
                f"labels must be an integer array of shape ({n},), got {labels.dtype} "
                f"{labels.shape}: give one class id per image"
            )
        if labels.min() < 0:
            raise DataError(f"labels contain {int(labels.min())}: class ids must be 0 or more")
        if arrays.class_names is not None and labels.max() >= len(arrays.class_names):
            raise DataError(
                f"label {int(labels.max())} has no name among {len(arrays.class_names)} "
                "class_names: give a name for every class id"
            )
        labels = labels.astype(np.int64)
    elif arrays.class_names is not None:
        raise DataError("class_names given without labels: give labels or drop class_names")
    if arrays.captions is not None and len(arrays.captions) != n:
        raise DataError(f"{len(arrays.captions)} captions for {n} images: give one caption per image")
    if bounded and (low < -1 or high > 1):  # within tolerance: clip, so readers can rely on [-1, 1] exactly
        images = np.clip(images, -1.0, 1.0)
    return ImageArrays(images, labels, arrays.captions, arrays.class_names, arrays.space)


def _metadata(arrays: ImageArrays) -> dict[bytes, bytes]:
    meta = {
        KEY_VERSION: FORMAT_VERSION,
        KEY_SHAPE: json.dumps(list(arrays.images.shape[1:])),
        KEY_NUM_CLASSES: str(arrays.num_classes),
        KEY_HAS_CAPTIONS: "true" if arrays.captions is not None else "false",
    }
    if arrays.class_names is not None:
        meta[KEY_CLASS_NAMES] = json.dumps(arrays.class_names)
    if arrays.space != "pixels":
        meta[KEY_SPACE] = arrays.space
    return {key: value.encode() for key, value in meta.items()}


def _table(arrays: ImageArrays, start: int, stop: int, meta: dict[bytes, bytes]) -> pa.Table:
    """Rows [start, stop) as an Arrow table carrying the data set's schema metadata."""
    images = arrays.images[start:stop]  # (B, C, H, W)
    rows = stop - start
    flat = pa.array(images.reshape(-1), type=pa.float32())  # (B*C*H*W,)
    image = pa.FixedSizeListArray.from_arrays(flat, int(np.prod(images.shape[1:])))
    labels = arrays.labels
    label = pa.nulls(rows, pa.int64()) if labels is None else pa.array(labels[start:stop], pa.int64())
    captions = arrays.captions
    caption = pa.nulls(rows, pa.string()) if captions is None else pa.array(captions[start:stop], pa.string())
    table = pa.table({"image": image, "label": label, "caption": caption})
    return table.replace_schema_metadata(meta)


def _existing_shards(out_dir: Path) -> list[Path]:
    """The shards in `out_dir`; a DataError if it holds anything else, so a swap never deletes it."""
    if not out_dir.exists():
        return []
    if not out_dir.is_dir():
        raise DataError(f"output {out_dir} is a file, not a folder: choose another output folder")
    entries = sorted(out_dir.iterdir())
    others = [entry.name for entry in entries if not entry.match(SHARD_GLOB)]
    if others:
        raise DataError(
            f"output folder {out_dir} holds files that are not data set shards "
            f"({', '.join(others[:3])}): choose an empty or new output folder"
        )
    return entries


def _swap_in(new_dir: Path, out_dir: Path) -> None:
    """Put `new_dir` at `out_dir`; at every moment the old data lives under one name or another."""
    if not out_dir.exists():
        new_dir.rename(out_dir)
        return
    old_dir = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
    out_dir.rename(old_dir)
    try:
        new_dir.rename(out_dir)
    except BaseException:
        old_dir.rename(out_dir)
        raise
    shutil.rmtree(old_dir)


def write_shards(
    arrays: ImageArrays, out_dir: str | Path, rows_per_shard: int = 1000, overwrite: bool = False
) -> list[Path]:
    """Validate `arrays` and write them as Parquet shards in `out_dir`; returns the shard paths.

    Shards are written to a hidden sibling folder first and then renamed into place, so a crash
    or a bad overwrite never leaves a half-written data set, and never loses the old one.
    """
    out_dir = Path(out_dir)
    if rows_per_shard < 1:
        raise ConfigError(f"rows_per_shard is {rows_per_shard}: give a positive number of rows")
    arrays = _checked(arrays)
    if _existing_shards(out_dir) and not overwrite:
        raise DataError(
            f"output folder {out_dir} already holds a data set: pass --overwrite "
            "(overwrite=True) to replace it, or choose another output folder"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    new_dir = out_dir.with_name(f".{out_dir.name}.writing-{uuid.uuid4().hex[:8]}")
    new_dir.mkdir()
    meta = _metadata(arrays)
    names = []
    try:
        for index, start in enumerate(range(0, len(arrays.images), rows_per_shard)):
            stop = min(start + rows_per_shard, len(arrays.images))
            names.append(f"part-{index:05d}.parquet")
            pq.write_table(_table(arrays, start, stop, meta), new_dir / names[-1])
        _swap_in(new_dir, out_dir)
    finally:
        shutil.rmtree(new_dir, ignore_errors=True)  # only still there when writing failed
    return [out_dir / name for name in names]


# ---------------------------------------------------------------- reading


PARQUET_ERRORS = (pa.ArrowException, OSError, ValueError)  # what pyarrow raises for a bad file


def _unreadable(file: Path, error: Exception) -> DataError:
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return DataError(
        f"shard {file} is not a valid Parquet file, corrupt or truncated ({reason}): "
        f"{PREPARE_HINT.format(path=file.parent)}"
    )


def _shard_schema(file: Path) -> tuple[pa.Schema, int]:
    """A shard's Arrow schema and row count, from the Parquet footer alone (cheap)."""
    try:
        footer = pq.read_metadata(file)
        return footer.schema.to_arrow_schema(), footer.num_rows
    except PARQUET_ERRORS as error:
        raise _unreadable(file, error) from None


def _shard_info(file: Path) -> DatasetInfo:
    """What one shard says about its data set; a DataError for a missing column or key."""
    schema, num_rows = _shard_schema(file)
    fix = PREPARE_HINT.format(path=file.parent)
    meta = schema.metadata or {}
    missing = [key.decode() for key in (KEY_VERSION, KEY_SHAPE, KEY_NUM_CLASSES, KEY_HAS_CAPTIONS) if key not in meta]
    if missing:
        raise DataError(
            f"shard {file} lacks schema metadata {', '.join(missing)}, so it was not written by this project: {fix}"
        )
    if meta[KEY_VERSION].decode() != FORMAT_VERSION:
        raise DataError(
            f"shard {file} has format version {meta[KEY_VERSION].decode()!r}, this code reads {FORMAT_VERSION!r}: {fix}"
        )
    try:
        shape = tuple(int(size) for size in json.loads(meta[KEY_SHAPE]))
        num_classes = int(meta[KEY_NUM_CLASSES])
        names = json.loads(meta[KEY_CLASS_NAMES]) if KEY_CLASS_NAMES in meta else None
        space = meta.get(KEY_SPACE, b"pixels").decode()
    except (ValueError, TypeError):
        raise DataError(f"shard {file} has unreadable schema metadata: {fix}") from None
    if len(shape) != 3 or min(shape) < 1 or num_classes < 0 or space not in SPACES:
        raise DataError(
            f"shard {file} metadata gives image shape {list(shape)} and {num_classes} "
            f"classes in space {space!r}, expected [C, H, W], 0 or more and one of {SPACES}: {fix}"
        )
    expected = {
        "image": pa.list_(pa.float32(), int(np.prod(shape))),
        "label": pa.int64(),
        "caption": pa.string(),
    }  # Arrow type equality ignores the list's field name
    for name, arrow_type in expected.items():
        got = schema.field(name).type if name in schema.names else "missing"
        if got != arrow_type:
            raise DataError(
                f"shard {file} column '{name}' is {got}, expected {arrow_type} (image shape {list(shape)}): {fix}"
            )
    return DatasetInfo(shape, num_rows, num_classes, meta[KEY_HAS_CAPTIONS] == b"true", [file], names, space)


def read_info(path: str | Path) -> DatasetInfo:
    """Check a data set folder from its shard footers alone, before any expensive read."""
    path = Path(path)
    if not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "does not exist"
        raise DataError(
            f"data set folder {path} {what}: create it with `python -m jobs.prepare_data --out {path}` or fix the path"
        )
    files = sorted(path.glob(SHARD_GLOB))
    if not files:
        raise DataError(
            f"data set folder {path} holds no {SHARD_GLOB} shards: create them with "
            f"`python -m jobs.prepare_data --out {path}`"
        )
    infos = [_shard_info(file) for file in files]
    first = infos[0]
    for info in infos[1:]:
        for field in ("image_shape", "num_classes", "has_captions", "class_names", "space"):
            if getattr(info, field) != getattr(first, field):
                raise DataError(
                    f"shards in {path} disagree on {field}: {files[0].name} has "
                    f"{getattr(first, field)}, {info.files[0].name} has "
                    f"{getattr(info, field)}: {PREPARE_HINT.format(path=path)}"
                )
    num_rows = sum(info.num_rows for info in infos)
    return DatasetInfo(
        first.image_shape, num_rows, first.num_classes, first.has_captions, files, first.class_names, first.space
    )


def _read_shard(file: Path) -> pa.Table:
    try:
        return pq.read_table(file)
    except PARQUET_ERRORS as error:  # a sound footer over damaged pages
        raise _unreadable(file, error) from None


def read_arrays(path: str | Path, expect_shape: tuple[int, ...] | None = None) -> ImageArrays:
    """The whole data set in memory (evaluation references); checks `expect_shape` before reading."""
    info = read_info(path)
    if expect_shape is not None and tuple(expect_shape) != info.image_shape:
        raise DataError(
            f"images of shape {info.image_shape} in {path}, expected {tuple(expect_shape)}: "
            "prepare the data set with matching --size/--channels or point the config "
            "at a data set of that shape"
        )
    table = pa.concat_tables([_read_shard(file) for file in info.files])
    fix = PREPARE_HINT.format(path=path)
    for name, must_be_full in (("image", True), ("label", info.num_classes > 0), ("caption", info.has_captions)):
        if must_be_full and table[name].null_count:
            raise DataError(f"data set {path} has {table[name].null_count} null values in column '{name}': {fix}")
    flat = table["image"].combine_chunks().flatten()  # (N*C*H*W,); flatten() honours slicing offsets
    images = flat.to_numpy(zero_copy_only=False).reshape(-1, *info.image_shape)  # (N, C, H, W)
    labels = table["label"].to_numpy().astype(np.int64) if info.num_classes else None
    if labels is not None and len(labels) and labels.max() >= info.num_classes:
        raise DataError(f"data set {path} has label {int(labels.max())} but {info.num_classes} classes: {fix}")
    captions = table["caption"].to_pylist() if info.has_captions else None
    return ImageArrays(images, labels, captions, info.class_names, info.space)


def read_splits(path: str | Path) -> tuple[ImageArrays, ImageArrays | None]:
    """(train, test) of a data set folder: its train/ and test/ sub-folders when it has both (as
    `jobs.prepare_data --source fashion-mnist` writes), else (the folder itself, None)."""
    path = Path(path)
    if (path / "train").is_dir() and (path / "test").is_dir():
        return read_arrays(path / "train"), read_arrays(path / "test")
    return read_arrays(path), None
