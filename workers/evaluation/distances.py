"""Distances between sets of feature vectors, as pure functions: Frechet distance, precision and recall."""

import warnings

import numpy as np
import scipy.linalg
import torch


def _sqrtm_of_product(cov1: np.ndarray, cov2: np.ndarray, eps: float) -> np.ndarray:
    """(cov1 cov2)^(1/2), (D, D), possibly complex from round-off."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", scipy.linalg.LinAlgWarning)
        try:
            root = scipy.linalg.sqrtm(cov1 @ cov2)
            if np.isfinite(root).all():
                return root
        except scipy.linalg.LinAlgWarning:
            pass
        # Dead ReLU units or fewer samples than dimensions make the product singular; a tiny
        # ridge on both covariances makes it regular and moves the distance by O(eps).
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        offset = np.eye(len(cov1)) * eps
        return scipy.linalg.sqrtm((cov1 + offset) @ (cov2 + offset))


def frechet_distance_from_stats(
    mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray, eps: float = 1e-6
) -> float:
    """||mu1 - mu2||^2 + Tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2)), the Frechet distance of two Gaussians."""
    covmean = np.real(_sqrtm_of_product(cov1, cov2, eps))  # the imaginary part is round-off for PSD inputs
    diff = mu1 - mu2
    value = diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(covmean)
    return max(float(value), 0.0)  # round-off can push identical sets a hair below zero


def gaussian_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, in float64."""
    feats = np.asarray(feats, dtype=np.float64)
    return feats.mean(axis=0), np.cov(feats, rowvar=False).reshape(feats.shape[1], feats.shape[1])


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two (N, D) feature sets."""
    return frechet_distance_from_stats(*gaussian_stats(feats_a), *gaussian_stats(feats_b))


def kth_neighbour_radii(points: torch.Tensor, k: int, chunk_size: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest other point: (N, D) -> (N,)."""
    radii = [
        torch.cdist(points[i : i + chunk_size], points).kthvalue(k + 1, dim=1).values  # k + 1: skip itself
        for i in range(0, len(points), chunk_size)
    ]
    return torch.cat(radii)


def _fraction_inside(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk_size: int) -> float:
    """Fraction of queries inside at least one ball (centres (M, D), radii (M,))."""
    inside = [
        (torch.cdist(queries[i : i + chunk_size], centres) <= radii[None, :]).any(dim=1)  # (chunk,)
        for i in range(0, len(queries), chunk_size)
    ]
    return float(torch.cat(inside).double().mean())


def precision_recall(
    real_feats: np.ndarray,
    fake_feats: np.ndarray,
    k: int = 3,
    chunk_size: int = 1024,
    real_radii: torch.Tensor | None = None,
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN balls as manifolds.

    Precision: the fraction of fakes inside the real manifold (quality). Recall: the fraction of
    reals inside the fake manifold (coverage). Rows are processed in chunks to bound memory.
    """
    if min(len(real_feats), len(fake_feats)) <= k:
        raise ValueError(f"precision_recall needs more than k={k} points in each set")
    real = torch.as_tensor(np.asarray(real_feats, dtype=np.float64))  # (N, D)
    fake = torch.as_tensor(np.asarray(fake_feats, dtype=np.float64))  # (M, D)
    real_radii = kth_neighbour_radii(real, k, chunk_size) if real_radii is None else real_radii  # (N,), cacheable
    fake_radii = kth_neighbour_radii(fake, k, chunk_size)
    precision = _fraction_inside(fake, real, real_radii, chunk_size)
    recall = _fraction_inside(real, fake, fake_radii, chunk_size)
    return precision, recall
