"""How good a set of images is, against real ones, in a yardstick's feature spaces.

`ReferenceSet` holds the real images and what every evaluation needs of them, computed once:
their features, Gaussian statistics and k-NN radii. `evaluate_images` scores generated images
against it: FD (lower is better) in the main CNN's features, precision and recall (quality and
coverage, k-NN manifolds in the same features), class accuracy of conditional samples, and for
8x8 digits also FD in an MLP's features and in raw pixels.
"""

from functools import cached_property

import numpy as np
import scipy.ndimage

from workers.data.shards import ImageArrays
from workers.errors import DataError
from workers.evaluation.distances import (
    frechet_distance_from_stats,
    gaussian_stats,
    kth_neighbour_radii,
    precision_recall,
)
from workers.evaluation.yardstick import Yardstick, features, predict, single_threaded

MIN_IMAGES = 10  # fewer makes covariances and k-NN radii meaningless
RANGE_TOLERANCE = 0.01  # samplers may overshoot [-1, 1] by rounding; more means a wrong scale
PIXEL_FD_MAX_DIM = 256  # FD in raw pixels only where a covariance of that many pixels is meaningful
PR_NEIGHBOURS = 3


def _flatten(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1)  # (N, C, H, W) -> (N, C*H*W)


class ReferenceSet:
    """Real images and their features in every space of a yardstick, computed on first use and kept."""

    def __init__(self, arrays: ImageArrays, yardstick: Yardstick):
        if tuple(arrays.images.shape[1:]) != yardstick.image_shape:
            raise DataError(
                f"the reference images are {list(arrays.images.shape[1:])}, the yardstick measures "
                f"{list(yardstick.image_shape)}: use the yardstick of the reference's data set"
            )
        self.arrays, self.yardstick = arrays, yardstick

    @cached_property
    def cnn_features(self) -> np.ndarray:
        with single_threaded():
            return features(self.yardstick.cnn.model, self.arrays.images)  # (N, D)

    @cached_property
    def cnn_stats(self) -> tuple[np.ndarray, np.ndarray]:
        return gaussian_stats(self.cnn_features)

    @cached_property
    def cnn_radii(self):
        import torch

        with single_threaded():
            return kth_neighbour_radii(torch.as_tensor(self.cnn_features), PR_NEIGHBOURS, 1024)  # (N,)

    @cached_property
    def mlp_stats(self) -> tuple[np.ndarray, np.ndarray] | None:
        mlp = self.yardstick.mlp
        if mlp is None:
            return None
        with single_threaded():
            return gaussian_stats(features(mlp.model, self.arrays.images))

    @cached_property
    def pixel_stats(self) -> tuple[np.ndarray, np.ndarray] | None:
        flat = _flatten(self.arrays.images)
        return gaussian_stats(flat) if flat.shape[1] <= PIXEL_FD_MAX_DIM else None


def check_images(images: np.ndarray, labels: np.ndarray | None, reference: ReferenceSet) -> None:
    """Raise DataError unless images (and labels) fit the reference and the yardstick."""
    shape, ref_shape = getattr(images, "shape", None), reference.arrays.images.shape
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[1:] != ref_shape[1:]:
        wanted = ", ".join(str(size) for size in ref_shape[1:])
        raise DataError(f"images have shape {shape} but the reference images are {ref_shape}; pass (K, {wanted})")
    if len(images) < MIN_IMAGES:
        raise DataError(f"got {len(images)} images; evaluate at least {MIN_IMAGES}")
    if not np.isfinite(images).all():
        raise DataError("images contain NaN or infinite values; check the sampler")
    low, high = float(images.min()), float(images.max())
    if low < -1 - RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise DataError(f"images range over [{low:.3g}, {high:.3g}] but must be in [-1, 1]; rescale or clip them")
    classes = reference.yardstick.num_classes
    if labels is not None and (labels.shape != (len(images),) or labels.min() < 0 or labels.max() >= classes):
        raise DataError(f"labels must be {len(images)} class ids in [0, {classes}), got shape {labels.shape}")


def evaluate_images(images: np.ndarray, labels: np.ndarray | None, reference: ReferenceSet) -> dict[str, float | None]:
    """Quality of (K, C, H, W) images in [-1, 1] against a reference set; lower fd is better.

    `labels` are the classes the images were conditioned on (None if unconditional)."""
    check_images(images, labels, reference)
    yardstick = reference.yardstick
    with single_threaded():
        fake_cnn = features(yardstick.cnn.model, images)  # (K, D)
        precision, recall = precision_recall(
            reference.cnn_features, fake_cnn, PR_NEIGHBOURS, real_radii=reference.cnn_radii
        )
        # An image the CNN reads as "static" counts as wrong, like one read as another class.
        class_accuracy = None if labels is None else float((predict(yardstick.cnn.model, images) == labels).mean())
        metrics = {"fd": frechet_distance_from_stats(*gaussian_stats(fake_cnn), *reference.cnn_stats)}
        if reference.mlp_stats is not None:
            fake_mlp = features(yardstick.mlp.model, images)
            metrics["fd_mlp"] = frechet_distance_from_stats(*gaussian_stats(fake_mlp), *reference.mlp_stats)
        if reference.pixel_stats is not None:
            metrics["fd_pixels"] = frechet_distance_from_stats(
                *gaussian_stats(_flatten(images)), *reference.pixel_stats
            )
    return metrics | {"class_accuracy": class_accuracy, "precision": precision, "recall": recall}


def evaluate_at_sizes(
    images: np.ndarray, labels: np.ndarray | None, reference: ReferenceSet, num: int, fd_sizes: tuple[int, ...] = ()
) -> dict[str, float | None]:
    """`evaluate_images` of the first `num` images, plus `fd_N`, the FD of the first N, for each N of
    `fd_sizes` (FD is biased upwards by small samples: the same model scores lower at 5,000 than at 1,000)."""
    metrics = evaluate_images(images[:num], None if labels is None else labels[:num], reference)
    for size in fd_sizes:
        check_images(images[:size], None, reference)
        if len(images) < size:
            raise DataError(f"fd_{size} needs {size} images, got {len(images)}: sample at least {size}")
        with single_threaded():
            fake = features(reference.yardstick.cnn.model, images[:size])
        metrics[f"fd_{size}"] = frechet_distance_from_stats(*gaussian_stats(fake), *reference.cnn_stats)
    return metrics


def gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Blur each (C, H, W) image spatially; outside the frame is blank paper (-1)."""
    return scipy.ndimage.gaussian_filter(images, sigma=(0, 0, sigma, sigma), mode="constant", cval=-1.0)


def class_mean_images(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each image replaced by the mean image of its class: (N, C, H, W) -> (N, C, H, W)."""
    classes, inverse = np.unique(labels, return_inverse=True)  # only the classes present
    means = np.stack([images[inverse == i].mean(axis=0) for i in range(len(classes))])  # (classes, C, H, W)
    return means[inverse]


def _take(data: ImageArrays, indices: np.ndarray) -> ImageArrays:
    return ImageArrays(images=data.images[indices], labels=None if data.labels is None else data.labels[indices])


def real_data_row(
    real: ImageArrays, reference: ReferenceSet, num: int, seed: int, fd_sizes: tuple[int, ...] = ()
) -> dict[str, float | None]:
    """The floor a perfect generator would reach: `num` random images of another real set (the training
    split) scored against the reference (the test split) like samples, at the same sample count."""
    size = max([num, *fd_sizes])
    drawn = _take(
        real, np.random.default_rng(seed).choice(len(real.images), size=size, replace=size > len(real.images))
    )
    return evaluate_at_sizes(drawn.images, drawn.labels, reference, num, fd_sizes)


def reference_points(reference: ReferenceSet, num: int, seed: int) -> dict[str, dict]:
    """The metrics of known image sets, to read a model's numbers against.

    - real_vs_real: one random half of the reference (at most `num` images) against the other,
      disjoint half: the floor a perfect generator would reach. FD is biased upwards by small
      samples, so this floor rises as the sets shrink (here each is about half the reference).
    - blurred_data: `num` real images blurred with a Gaussian of sigma 1 pixel.
    - class_mean_images: each of `num` real images replaced by its class's mean image, the
      signature of mode collapse within classes (high precision, low recall). Needs labels.
    - gaussian_noise: N(0, std 0.5) pixels clipped to [-1, 1], the ceiling.
    All but real_vs_real are compared with the whole reference, like a model's samples.
    """
    data, yardstick = reference.arrays, reference.yardstick
    rng = np.random.default_rng(seed)
    n = len(data.images)
    order = rng.permutation(n)
    half_a, half_b = _take(data, order[: n // 2][:num]), _take(data, order[n // 2 :])
    indices = rng.choice(n, size=num, replace=num > n)
    drawn = _take(data, indices)
    rows = {
        "real_vs_real": evaluate_images(half_a.images, half_a.labels, ReferenceSet(half_b, yardstick)),
        "blurred_data": evaluate_images(gaussian_blur(drawn.images, 1.0), drawn.labels, reference),
    }
    if data.labels is not None:
        means = class_mean_images(data.images, data.labels)[indices]  # (num, C, H, W)
        rows["class_mean_images"] = evaluate_images(means, drawn.labels, reference)
    noise = np.clip(rng.normal(0.0, 0.5, size=drawn.images.shape), -1.0, 1.0).astype(np.float32)
    rows["gaussian_noise"] = evaluate_images(noise, None, reference)
    return rows
