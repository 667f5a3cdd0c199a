"""Sample grids as PNG (for the eye, MLflow artifacts and the docs): a gap between tiles, a class name per row."""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

GAP = 2  # pixels of background between tiles, after scaling
BACKGROUND = 255  # white between tiles and behind the row names


def grid_image(
    images: np.ndarray, columns: int = 10, scale: int = 4, row_names: list[str] | None = None
) -> Image.Image:
    """Tile images (K, C, H, W) in [-1, 1] into one PIL image, each pixel `scale` x `scale`, with a gap between
    tiles and, when given, a name written left of each row."""
    k, c, h, w = images.shape
    rows = -(-k // columns)
    pixels = ((np.clip(images, -1, 1) + 1) * 127.5).round().astype(np.uint8)  # (K, C, H, W)
    pixels = pixels.repeat(scale, axis=2).repeat(scale, axis=3).transpose(0, 2, 3, 1)  # (K, sH, sW, C)
    tile_h, tile_w = h * scale, w * scale
    label_w = 0 if not row_names else 6 * max(len(name) for name in row_names) + 2 * GAP
    canvas = np.full((rows * (tile_h + GAP) + GAP, label_w + columns * (tile_w + GAP) + GAP, c), BACKGROUND, np.uint8)
    for i, tile in enumerate(pixels):
        r, col = divmod(i, columns)
        top, left = GAP + r * (tile_h + GAP), label_w + GAP + col * (tile_w + GAP)
        canvas[top : top + tile_h, left : left + tile_w] = tile
    image = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    if row_names:
        draw = ImageDraw.Draw(image)
        for r, name in enumerate(row_names[:rows]):
            draw.text((GAP, GAP + r * (tile_h + GAP) + tile_h // 2 - 5), name, fill=0)
    return image


def save_grid(
    images: np.ndarray,
    path: Path,
    labels: np.ndarray | None = None,
    class_names: list[str] | None = None,
    columns: int = 10,
) -> Path:
    """Save up to ten rows of samples; with labels, one row per class (in class order), named by `class_names`
    (or the class ids)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    row_names = None
    if labels is not None:
        order = np.argsort(labels, kind="stable")  # (K,): class 0's samples first, then class 1's, ...
        images, labels = images[order], labels[order]
        classes = sorted(set(labels.tolist()))
        per_class = min(int(np.sum(labels == cls)) for cls in classes)
        columns = min(columns, per_class)
        keep = np.concatenate([np.flatnonzero(labels == cls)[:columns] for cls in classes[:10]])
        images = images[keep]
        row_names = [class_names[cls] if class_names else str(cls) for cls in classes[:10]]
    grid_image(images[: columns * 10], columns, row_names=row_names).save(path)
    return path
