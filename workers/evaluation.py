"""The yardstick for generated 8x8 digits: feature spaces, Frechet distance, precision/recall.

Inception features mean little on 8x8 grayscale digits, so quality is measured in the feature
spaces of two small classifiers trained here on scikit-learn's digits (a CNN and, as an
independent check, an MLP on flattened pixels with another seed) and in raw pixel space. The
classifiers are trained once, reproducibly, and cached as safetensors + JSON. `inception_fid`
is offered too, for users who bring their own local Inception weights.

Both classifiers also learn an eleventh class, "static" (random pixel noise). A classifier that
has only seen clean digits drives every off-manifold input, a blurred blob or pure static alike,
towards weak features, so FD could not rank noise below blur. The extra class gives the features
a direction for noise, the failure of an under-denoised sampler.
"""

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.linalg
import scipy.ndimage
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits
from torch import nn

from workers.data import ImageArrays, digits_arrays
from workers.errors import DataError, ModelFolderError, UserError

DIGITS_SHAPE = (1, 8, 8)  # (C, H, W) the yardstick classifiers are trained on
NUM_CLASSES = 10  # digit classes; conditioning labels must be below this
STATIC_CLASS = NUM_CLASSES  # the extra "random noise" class, so the heads have NUM_CLASSES + 1 outputs
MIN_IMAGES = 10  # fewer makes covariances and k-NN radii meaningless
RANGE_TOLERANCE = 0.01  # samplers may overshoot [-1, 1] by rounding; more means a wrong scale


@dataclass(frozen=True)
class ClassifierConfig:
    """Everything that determines a trained yardstick classifier (a cache is reused only if equal)."""

    kind: str  # "cnn" or "mlp"
    seed: int  # weight init, shuffling and augmentation
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    shift_augment: bool = True  # random 1-pixel shifts, so features do not hinge on exact placement
    static_per_batch: int = 8  # extra static images per batch, labelled STATIC_CLASS
    static_std_min: float = 0.2  # their pixels are N(0, std) clipped to [-1, 1], std uniform in [min, max]
    static_std_max: float = 1.0
    test_fraction: float = 0.25
    split_seed: int = 0  # the same stratified split for both classifiers


CNN_CONFIG = ClassifierConfig("cnn", seed=0, epochs=20, batch_size=64, lr=5e-3, weight_decay=1e-4)
MLP_CONFIG = ClassifierConfig("mlp", seed=1, epochs=40, batch_size=64, lr=5e-3, weight_decay=1e-4)


class FeatureClassifier(nn.Module):
    """A body that maps images to a feature vector, and a linear head from features to logits."""

    def __init__(self, body: nn.Sequential, feature_dim: int) -> None:
        super().__init__()
        self.body = body
        self.head = nn.Linear(feature_dim, NUM_CLASSES + 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # (N, 1, 8, 8) -> (N, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (N, NUM_CLASSES + 1) logits


class DigitsClassifier(FeatureClassifier):
    """CNN for 1x8x8 digits, ~57k parameters; `features` is the 128-d penultimate layer.

    Channels stay narrow at full resolution because that is where the compute goes: it must
    train in seconds on two busy CPU cores.
    """

    def __init__(self) -> None:
        body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),  # (N, 16, 8, 8)
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),  # (N, 32, 8, 8)
            nn.MaxPool2d(2),  # (N, 32, 4, 4)
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),  # (N, 64, 4, 4)
            nn.MaxPool2d(2),  # (N, 64, 2, 2)
            nn.Flatten(),  # (N, 256)
            nn.Linear(256, 128), nn.ReLU(),  # (N, 128)
        )  # fmt: skip
        super().__init__(body, feature_dim=128)


class DigitsMLP(FeatureClassifier):
    """MLP on the 64 flattened pixels, ~51k parameters; `features` is its 128-d last hidden layer."""

    def __init__(self) -> None:
        body = nn.Sequential(
            nn.Flatten(),  # (N, 64)
            nn.Linear(64, 256), nn.ReLU(),  # (N, 256)
            nn.Linear(256, 128), nn.ReLU(),  # (N, 128)
        )  # fmt: skip
        super().__init__(body, feature_dim=128)


def build_classifier(kind: str) -> FeatureClassifier:
    return {"cnn": DigitsClassifier, "mlp": DigitsMLP}[kind]()


@dataclass
class TrainedClassifier:
    model: FeatureClassifier  # in eval mode
    config: ClassifierConfig
    test_accuracy: float  # on the held-out stratified split


@dataclass
class Yardstick:
    cnn: TrainedClassifier  # the main feature space
    mlp: TrainedClassifier  # an independent one: other architecture, other seed


# ---------------------------------------------------------------- training and cache


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch and BLAS on one thread, then restore. The tensors here are small, so extra threads
    buy little, and on a busy machine they spin-wait: several times slower on 2 shared cores. One
    thread also makes training bit-identical whatever the core count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(threads)


def digits_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed stratified (train indices, test indices) of the digits."""
    indices = np.arange(len(labels))
    train, test = train_test_split(indices, test_size=test_fraction, stratify=labels, random_state=seed)
    return np.sort(train), np.sort(test)


def random_shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by -1, 0 or +1 pixel in each direction, filling with background (-1)."""
    n, _, h, w = x.shape
    padded = nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)[:, 0]  # (N, H+2, W+2)
    dy, dx = torch.randint(0, 3, (2, n), generator=generator)  # crop offsets into the padding
    rows = dy[:, None] + torch.arange(h)  # (N, H)
    cols = dx[:, None] + torch.arange(w)  # (N, W)
    return padded[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]][:, None]  # (N, 1, H, W)


def random_static(num: int, config: ClassifierConfig, generator: torch.Generator) -> torch.Tensor:
    """(num, 1, 8, 8) images of clipped Gaussian pixel noise, each with its own std."""
    std = torch.empty(num, 1, 1, 1).uniform_(config.static_std_min, config.static_std_max, generator=generator)
    return (torch.randn(num, *DIGITS_SHAPE, generator=generator) * std).clamp(-1.0, 1.0)


@torch.no_grad()
def _apply(model: FeatureClassifier, images: np.ndarray, method: str, batch_size: int = 1024) -> np.ndarray:
    """Run `model.<method>` over numpy images in batches; returns float64 (N, D)."""
    model.eval()
    outputs = [
        getattr(model, method)(torch.tensor(images[i : i + batch_size], dtype=torch.float32))
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(outputs).double().numpy()


def features(model: FeatureClassifier, images: np.ndarray) -> np.ndarray:
    return _apply(model, images, "features")  # (N, 128) float64


def predict(model: FeatureClassifier, images: np.ndarray) -> np.ndarray:
    """Argmax over the digits and "static": (N,) int64, where STATIC_CLASS means "not a digit"."""
    return _apply(model, images, "forward").argmax(axis=1)


@single_threaded()
def train_classifier(config: ClassifierConfig, data: ImageArrays) -> TrainedClassifier:
    """Train one yardstick classifier from scratch; the same config gives the same weights."""
    assert data.labels is not None
    train_idx, test_idx = digits_split(data.labels, config.test_fraction, config.split_seed)
    with torch.random.fork_rng(devices=[]):  # seed weight init without touching the caller's RNG
        torch.manual_seed(config.seed)
        model = build_classifier(config.kind)
    generator = torch.Generator().manual_seed(config.seed)
    x = torch.from_numpy(data.images[train_idx])  # (N_train, 1, 8, 8)
    y = torch.from_numpy(data.labels[train_idx])  # (N_train,)
    model.train()
    _fit(model, x, y, config, generator)
    accuracy = float((predict(model, data.images[test_idx]) == data.labels[test_idx]).mean())
    return TrainedClassifier(model, config, test_accuracy=accuracy)


def _fit(
    model: FeatureClassifier, x: torch.Tensor, y: torch.Tensor, config: ClassifierConfig, generator: torch.Generator
) -> None:
    """AdamW with a one-cycle schedule on (N, 1, 8, 8) images x and (N,) labels y, plus static."""
    steps_per_epoch = -(-len(x) // config.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=config.epochs * steps_per_epoch)
    for _ in range(config.epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), config.batch_size):
            batch = order[start : start + config.batch_size]
            xb = random_shift(x[batch], generator) if config.shift_augment else x[batch]
            xb = torch.cat([xb, random_static(config.static_per_batch, config, generator)])  # (B + S, 1, 8, 8)
            yb = torch.cat([y[batch], torch.full((config.static_per_batch,), STATIC_CLASS)])  # (B + S,)
            loss = nn.functional.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()


def _load_cached(config: ClassifierConfig, weights: Path, meta: Path) -> TrainedClassifier | None:
    """The cached classifier, or None when there is none or it was trained with another config."""
    if not (weights.is_file() and meta.is_file()):
        return None
    try:
        info = json.loads(meta.read_text())
        if info.get("config") != asdict(config):
            return None
        model = build_classifier(config.kind)
        model.load_state_dict(load_file(weights))
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as error:  # truncated or foreign files
        raise ModelFolderError(
            f"yardstick cache {weights.parent} is unreadable ({type(error).__name__}); delete it to retrain"
        ) from None
    model.eval()
    return TrainedClassifier(model, config, test_accuracy=float(info["test_accuracy"]))


def _load_or_train(config: ClassifierConfig, cache_dir: Path) -> TrainedClassifier:
    weights, meta = cache_dir / f"{config.kind}.safetensors", cache_dir / f"{config.kind}.json"
    cached = _load_cached(config, weights, meta)
    if cached is not None:
        return cached
    trained = train_classifier(config, digits_arrays())
    cache_dir.mkdir(parents=True, exist_ok=True)
    save_file(trained.model.state_dict(), weights)
    # The JSON is written last: its presence means the weights are complete.
    num_params = sum(p.numel() for p in trained.model.parameters())
    info = {"config": asdict(config), "test_accuracy": trained.test_accuracy, "num_params": num_params}
    meta.write_text(json.dumps(info, indent=2) + "\n")
    return trained


def load_or_train_yardstick(cache_dir: Path = Path("runs/yardstick")) -> Yardstick:
    """Both yardstick classifiers: loaded from `cache_dir` when cached, else trained and saved."""
    return Yardstick(cnn=_load_or_train(CNN_CONFIG, Path(cache_dir)), mlp=_load_or_train(MLP_CONFIG, Path(cache_dir)))


# ---------------------------------------------------------------- distances (pure functions)


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


def _kth_neighbour_radii(points: torch.Tensor, k: int, chunk_size: int) -> torch.Tensor:
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
    real_feats: np.ndarray, fake_feats: np.ndarray, k: int = 3, chunk_size: int = 1024
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN balls as manifolds.

    Precision: the fraction of fakes inside the real manifold (quality). Recall: the fraction of
    reals inside the fake manifold (coverage). Rows are processed in chunks to bound memory.
    """
    if min(len(real_feats), len(fake_feats)) <= k:
        raise ValueError(f"precision_recall needs more than k={k} points in each set")
    real = torch.as_tensor(np.asarray(real_feats, dtype=np.float64))  # (N, D)
    fake = torch.as_tensor(np.asarray(fake_feats, dtype=np.float64))  # (M, D)
    real_radii = _kth_neighbour_radii(real, k, chunk_size)
    fake_radii = _kth_neighbour_radii(fake, k, chunk_size)
    precision = _fraction_inside(fake, real, real_radii, chunk_size)
    recall = _fraction_inside(real, fake, fake_radii, chunk_size)
    return precision, recall


# ---------------------------------------------------------------- evaluation


def check_images(images: np.ndarray, labels: np.ndarray | None, reference: ImageArrays) -> None:
    """Raise DataError unless images (and labels) fit the reference and the yardstick."""
    shape, ref_shape = getattr(images, "shape", None), reference.images.shape
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[1:] != ref_shape[1:]:
        wanted = ", ".join(str(size) for size in ref_shape[1:])
        raise DataError(f"images have shape {shape} but the reference images are {ref_shape}; pass (K, {wanted})")
    if ref_shape[1:] != DIGITS_SHAPE:
        raise DataError(f"the yardstick is trained on {DIGITS_SHAPE} digits, not {ref_shape[1:]} images; use 8x8 data")
    if len(images) < MIN_IMAGES:
        raise DataError(f"got {len(images)} images; evaluate at least {MIN_IMAGES}")
    if not np.isfinite(images).all():
        raise DataError("images contain NaN or infinite values; check the sampler")
    low, high = float(images.min()), float(images.max())
    if low < -1 - RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise DataError(f"images range over [{low:.3g}, {high:.3g}] but must be in [-1, 1]; rescale or clip them")
    if labels is not None and (labels.shape != (len(images),) or labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(f"labels must be {len(images)} class ids in [0, {NUM_CLASSES}), got shape {labels.shape}")


def _flatten(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1)  # (N, C, H, W) -> (N, C*H*W)


@single_threaded()
def evaluate_images(
    images: np.ndarray, labels: np.ndarray | None, reference: ImageArrays, yardstick: Yardstick
) -> dict[str, float | None]:
    """Quality of (K, 1, 8, 8) images in [-1, 1] against a reference set; lower fd is better.

    `labels` are the classes the images were conditioned on (None if unconditional).
    """
    check_images(images, labels, reference)
    cnn, mlp = yardstick.cnn.model, yardstick.mlp.model
    fake_cnn, real_cnn = features(cnn, images), features(cnn, reference.images)  # (K, 128), (N, 128)
    precision, recall = precision_recall(real_cnn, fake_cnn)
    # An image the CNN reads as "static" counts as wrong, like one read as another digit.
    class_accuracy = None if labels is None else float((predict(cnn, images) == labels).mean())
    return {
        "fd": frechet_distance(fake_cnn, real_cnn),
        "fd_mlp": frechet_distance(features(mlp, images), features(mlp, reference.images)),
        "fd_pixels": frechet_distance(_flatten(images), _flatten(reference.images)),
        "class_accuracy": class_accuracy,
        "precision": precision,
        "recall": recall,
    }


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


def reference_points(reference: ImageArrays, yardstick: Yardstick, num: int, seed: int) -> dict[str, dict]:
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
    rng = np.random.default_rng(seed)
    n = len(reference.images)
    order = rng.permutation(n)
    half_a, half_b = _take(reference, order[: n // 2][:num]), _take(reference, order[n // 2 :])
    indices = rng.choice(n, size=num, replace=num > n)
    drawn = _take(reference, indices)
    rows = {
        "real_vs_real": evaluate_images(half_a.images, half_a.labels, half_b, yardstick),
        "blurred_data": evaluate_images(gaussian_blur(drawn.images, 1.0), drawn.labels, reference, yardstick),
    }
    if reference.labels is not None:
        means = class_mean_images(reference.images, reference.labels)[indices]  # (num, C, H, W)
        rows["class_mean_images"] = evaluate_images(means, drawn.labels, reference, yardstick)
    noise = np.clip(rng.normal(0.0, 0.5, size=drawn.images.shape), -1.0, 1.0).astype(np.float32)
    rows["gaussian_noise"] = evaluate_images(noise, None, reference, yardstick)
    return rows


# ---------------------------------------------------------------- Inception FID (optional)


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
