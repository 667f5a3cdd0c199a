"""Classic FID with Inception v3 features, for users who bring a local weights file (nothing is downloaded)."""

from pathlib import Path

import numpy as np
import torch

from workers.errors import UserError


def to_uint8_rgb(images: np.ndarray) -> torch.Tensor:
    """[-1, 1] float (N, 1 or 3, H, W) -> uint8 (N, 3, H, W), as Inception expects."""
    pixels = np.clip(np.rint((images + 1.0) * 127.5), 0, 255).astype(np.uint8)
    if pixels.shape[1] == 1:
        pixels = np.repeat(pixels, 3, axis=1)
    return torch.from_numpy(pixels)


def check_inception_weights(weights_path: Path) -> None:
    """Fail early, before any work, when the local Inception weights file is missing."""
    if not Path(weights_path).is_file():
        raise UserError(
            f"Inception weights file {weights_path} not found; download "
            "weights-inception-2015-12-05-6726825d.pth (torch-fidelity's release) and pass its path"
        )


def inception_fid(images: np.ndarray, reference_images: np.ndarray, weights_path: Path, batch_size: int = 50) -> float:
    """Classic FID with torchmetrics' Inception v3, from a LOCAL weights file; never downloads.

    The file is torch-fidelity's `weights-inception-2015-12-05-6726825d.pth`. The 8x8 images are
    upsampled to 299x299 inside the metric, so this is slow on CPU and of limited meaning here.
    """
    check_inception_weights(weights_path)
    try:
        import torch_fidelity  # noqa: F401  (torchmetrics builds its Inception from it)
    except ImportError:
        raise UserError("Inception FID needs the torch-fidelity package: pip install torch-fidelity") from None
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(weights_path))
    for is_real, batch_source in ((True, reference_images), (False, images)):
        for start in range(0, len(batch_source), batch_size):
            metric.update(to_uint8_rgb(batch_source[start : start + batch_size]), real=is_real)
    return float(metric.compute())
