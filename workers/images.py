"""Sample grids as PNG (for the eye, MLflow artifacts and the README)."""

from pathlib import Path

import numpy as np
from PIL import Image


def grid_image(images: np.ndarray, columns: int = 10, scale: int = 4) -> Image.Image:
    """Tile images (K, C, H, W) in [-1, 1] into one PIL image, each pixel `scale` x `scale`."""
    k, c, h, w = images.shape
    rows = -(-k // columns)
    canvas = np.full((rows * h, columns * w, c), 0.0, dtype=np.float32)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        canvas[r * h : (r + 1) * h, col * w : (col + 1) * w] = image.transpose(1, 2, 0)
    pixels = ((np.clip(canvas, -1, 1) + 1) * 127.5).round().astype(np.uint8)
    pixels = pixels.repeat(scale, axis=0).repeat(scale, axis=1)
    return Image.fromarray(pixels[..., 0] if c == 1 else pixels)


def save_grid(images: np.ndarray, path: Path, columns: int = 10) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid_image(images[: columns * 10], columns).save(path)
    return path
