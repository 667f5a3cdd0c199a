"""Streaming a Parquet data set through Ray Data, and Ray Data batches back into arrays."""

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from workers.data.shards import read_info
from workers.errors import DataError

if TYPE_CHECKING:  # ray is slow to import; only `ray_dataset` needs it
    import ray.data


def ray_dataset(path: str | Path) -> "ray.data.Dataset":
    """A Ray Data set over the shards, read in file order; checked with `read_info` first so errors are clear and early.

    Keeping order is set on the process's data context (a data set takes a copy when it is made, and
    Ray Train reads it for its splits): without it the shards' blocks arrive in whichever order their
    reads finish, and two runs of one seed trained different models (measured on both the teacher
    and the critic's real batches).
    """
    import ray.data

    info = read_info(path)
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    return ray.data.read_parquet([str(file) for file in info.files])


def batch_to_arrays(
    batch: dict[str, np.ndarray], image_shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Images (B, C, H, W) float32 and labels (B,) int64 or None from one Ray Data numpy batch.

    Ray Data 2.60 hands a fixed-size-list column to `batch_format="numpy"` as a 1-D object array
    of B float32 arrays of length C*H*W (after a `map_batches` it may be a 2-D float array), and
    an all-null int64 column as float64 NaN.
    """
    column = batch["image"]
    if column.dtype == object:
        column = np.stack(column) if len(column) else np.empty((0, int(np.prod(image_shape))))
    if column.size != len(column) * int(np.prod(image_shape)):
        raise DataError(
            f"batch images have shape {column.shape}, expected rows of {tuple(image_shape)}: "
            "pass the data set's own image_shape (from read_info)"
        )
    images = column.reshape(len(column), *image_shape).astype(np.float32, copy=False)  # (B, C, H, W)
    return images, _batch_labels(batch.get("label"))


def _batch_labels(column: np.ndarray | None) -> np.ndarray | None:
    """Labels (B,) int64, or None when the batch has none; partial nulls are a DataError."""
    if column is None:
        return None
    if column.dtype.kind in "iu":
        return column.astype(np.int64, copy=False)
    missing = np.isnan(column) if column.dtype.kind == "f" else np.equal(column, None)  # (B,) bool
    if missing.all():
        return None
    if missing.any():
        raise DataError(
            f"a batch has {int(missing.sum())} null labels among {len(column)}: "
            "label every image or none when preparing the data set"
        )
    return column.astype(np.int64)
