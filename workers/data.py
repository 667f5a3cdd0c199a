"""Image data sets: the in-memory form every part of the project shares, and its sources.

In memory a data set is an `ImageArrays`: images float32 (N, C, H, W) in [-1, 1], labels int64
(N,) or None, captions list[str] or None. On disk it is Parquet shards (see `write_shards`).
"""

from dataclasses import dataclass

import numpy as np


@dataclass
class ImageArrays:
    images: np.ndarray  # (N, C, H, W) float32 in [-1, 1]
    labels: np.ndarray | None = None  # (N,) int64 class ids, or None
    captions: list[str] | None = None  # N captions, or None

    @property
    def num_classes(self) -> int:
        return 0 if self.labels is None else int(self.labels.max()) + 1


def digits_arrays() -> ImageArrays:
    """scikit-learn's bundled 8x8 digits (1,797 images, labels 0-9), scaled from [0, 16] to [-1, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images.astype(np.float32) / 8.0 - 1.0)[:, None]  # (N, 1, 8, 8)
    return ImageArrays(images=images, labels=digits.target.astype(np.int64))
