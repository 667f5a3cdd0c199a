"""The yardstick: small classifiers trained by the project on a data set, whose features FD is measured in.

Inception features mean little on small grey images, and downloading them is not an option, so
quality is measured in the feature space of classifiers trained here on the data set itself:
- 8x8 digits: a CNN and, as an independent check, an MLP on flattened pixels with another seed,
  both trained on a stratified 75% of scikit-learn's digits and tested on the rest;
- 32x32 images (Fashion-MNIST): a CNN trained on the training split and tested on the test split.
The classifiers are trained once, reproducibly, and cached as safetensors + JSON, keyed by the
data they were trained on.

Every classifier also learns one extra class, "static" (random pixel noise). A classifier that has
only seen clean images drives every off-manifold input, a blurred blob or pure static alike,
towards weak features, so FD could not rank noise below blur. The extra class gives the features
a direction for noise, the failure of an under-denoised sampler.
"""

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits
from torch import nn

from workers.data.shards import ImageArrays
from workers.errors import DataError, ModelFolderError

DEFAULT_CACHE = Path("runs/yardstick")


@dataclass(frozen=True)
class ClassifierConfig:
    """Everything that determines a trained yardstick classifier (a cache is reused only if equal)."""

    kind: str  # "cnn" or "mlp" (8x8), "cnn32" (32x32)
    seed: int  # weight init, shuffling and augmentation
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    shift_augment: bool = True  # random shifts, so features do not hinge on exact placement
    shift_pixels: int = 1  # up to this many pixels in each direction
    static_per_batch: int = 8  # extra static images per batch, labelled as the static class
    static_std_min: float = 0.2  # their pixels are N(0, std) clipped to [-1, 1], std uniform in [min, max]
    static_std_max: float = 1.0
    test_fraction: float = 0.25  # held out of the training data when no test split is given
    split_seed: int = 0  # the same stratified split for both digits classifiers
    threads: int = 1  # one thread: bit-identical whatever the core count


CNN_CONFIG = ClassifierConfig("cnn", seed=0, epochs=20, batch_size=64, lr=5e-3, weight_decay=1e-4)
MLP_CONFIG = ClassifierConfig("mlp", seed=1, epochs=40, batch_size=64, lr=5e-3, weight_decay=1e-4)
CNN32_CONFIG = ClassifierConfig(
    "cnn32", seed=0, epochs=3, batch_size=128, lr=3e-3, weight_decay=1e-4, shift_pixels=2, threads=2
)


class FeatureClassifier(nn.Module):
    """A body that maps images to a feature vector, and a linear head from features to logits."""

    def __init__(self, body: nn.Sequential, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.body = body
        self.head = nn.Linear(feature_dim, num_classes + 1)  # + static

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # (N, C, H, W) -> (N, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (N, num_classes + 1) logits


def digits_cnn(channels: int, num_classes: int) -> FeatureClassifier:
    """CNN for 1x8x8 digits, ~57k parameters; its features are the 128-d penultimate layer.

    Channels stay narrow at full resolution because that is where the compute goes: it must
    train in seconds on two busy CPU cores."""
    body = nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(),  # (N, 16, 8, 8)
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),  # (N, 32, 8, 8)
        nn.MaxPool2d(2),  # (N, 32, 4, 4)
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),  # (N, 64, 4, 4)
        nn.MaxPool2d(2),  # (N, 64, 2, 2)
        nn.Flatten(),  # (N, 256)
        nn.Linear(256, 128), nn.ReLU(),  # (N, 128)
    )  # fmt: skip
    return FeatureClassifier(body, 128, num_classes)


def digits_mlp(channels: int, num_classes: int) -> FeatureClassifier:
    """MLP on the 64 flattened pixels, ~51k parameters; its features are the 128-d last hidden layer."""
    body = nn.Sequential(
        nn.Flatten(),  # (N, 64)
        nn.Linear(64 * channels, 256), nn.ReLU(),  # (N, 256)
        nn.Linear(256, 128), nn.ReLU(),  # (N, 128)
    )  # fmt: skip
    return FeatureClassifier(body, 128, num_classes)


def cnn32(channels: int, num_classes: int) -> FeatureClassifier:
    """CNN for 32x32 images, ~0.16M parameters; its features are the 128-d penultimate layer. Narrow at full
    resolution, where the compute goes: 60,000 images train in minutes on two CPU cores."""
    body = nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (N, 16, 16, 16)
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (N, 32, 8, 8)
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (N, 64, 4, 4)
        nn.Flatten(),  # (N, 1024)
        nn.Linear(1024, 128), nn.ReLU(),  # (N, 128)
    )  # fmt: skip
    return FeatureClassifier(body, 128, num_classes)


ARCHITECTURES = {"cnn": digits_cnn, "mlp": digits_mlp, "cnn32": cnn32}


def build_classifier(kind: str, channels: int = 1, num_classes: int = 10) -> FeatureClassifier:
    return ARCHITECTURES[kind](channels, num_classes)


@dataclass
class TrainedClassifier:
    model: FeatureClassifier  # in eval mode
    config: ClassifierConfig
    test_accuracy: float  # on the test split, or the held-out part of the training data


@dataclass
class Yardstick:
    """The classifiers of one data set: `cnn` is the main feature space, `mlp` an independent one (digits)."""

    cnn: TrainedClassifier
    mlp: TrainedClassifier | None
    image_shape: tuple[int, int, int]  # (C, H, W) the classifiers read
    num_classes: int  # real classes; index num_classes is "static"


def configs_for(shape: tuple[int, int, int]) -> tuple[ClassifierConfig, ClassifierConfig | None]:
    """The classifiers a data set of images of `shape` is measured with."""
    if shape[1:] == (8, 8):
        return CNN_CONFIG, MLP_CONFIG
    if shape[1:] == (32, 32):
        return CNN32_CONFIG, None
    raise DataError(
        f"the yardstick measures 8x8 or 32x32 images, not {list(shape)}: resize the data set with "
        "`python -m jobs.prepare_data --size 32`, or bring Inception weights (jobs.evaluate --inception-weights)"
    )


# ---------------------------------------------------------------- training and cache


@contextmanager
def threads(count: int) -> Iterator[None]:
    """Run torch and BLAS on `count` threads, then restore. The tensors here are small, so extra threads
    buy little, and on a busy machine they spin-wait: several times slower on 2 shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        with threadpool_limits(limits=count):
            yield
    finally:
        torch.set_num_threads(before)


def single_threaded():
    """One thread: bit-identical results whatever the core count."""
    return threads(1)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed stratified (train indices, test indices)."""
    indices = np.arange(len(labels))
    train, test = train_test_split(indices, test_size=test_fraction, stratify=labels, random_state=seed)
    return np.sort(train), np.sort(test)


def random_shift(x: torch.Tensor, generator: torch.Generator, pixels: int = 1) -> torch.Tensor:
    """Shift each image by up to `pixels` in each direction, filling with background (-1)."""
    n, _, h, w = x.shape
    padded = nn.functional.pad(x, (pixels,) * 4, value=-1.0)[:, 0]  # (N, H+2p, W+2p)
    dy, dx = torch.randint(0, 2 * pixels + 1, (2, n), generator=generator)  # crop offsets into the padding
    rows = dy[:, None] + torch.arange(h)  # (N, H)
    cols = dx[:, None] + torch.arange(w)  # (N, W)
    return padded[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]][:, None]  # (N, 1, H, W)


def random_static(
    num: int, shape: tuple[int, int, int], config: ClassifierConfig, generator: torch.Generator
) -> torch.Tensor:
    """(num, C, H, W) images of clipped Gaussian pixel noise, each with its own std."""
    std = torch.empty(num, 1, 1, 1).uniform_(config.static_std_min, config.static_std_max, generator=generator)
    return (torch.randn(num, *shape, generator=generator) * std).clamp(-1.0, 1.0)


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
    """Argmax over the classes and "static": (N,) int64, where index num_classes means "none of them"."""
    return _apply(model, images, "forward").argmax(axis=1)


def train_classifier(config: ClassifierConfig, data: ImageArrays, test: ImageArrays | None = None) -> TrainedClassifier:
    """Train one yardstick classifier from scratch on `data` (a stratified part of it when no `test` is
    given) and measure it on `test` (or the rest); the same config and data give the same weights."""
    if data.labels is None:
        raise DataError("the yardstick trains classifiers, so its data set needs labels: prepare one with labels")
    with threads(config.threads):
        if test is None:
            train_idx, test_idx = stratified_split(data.labels, config.test_fraction, config.split_seed)
            test = ImageArrays(data.images[test_idx], data.labels[test_idx])
            data = ImageArrays(data.images[train_idx], data.labels[train_idx])
        shape, num_classes = tuple(data.images.shape[1:]), data.num_classes
        with torch.random.fork_rng(devices=[]):  # seed weight init without touching the caller's RNG
            torch.manual_seed(config.seed)
            model = build_classifier(config.kind, shape[0], num_classes)
        generator = torch.Generator().manual_seed(config.seed)
        writable = lambda a: a if a.flags.writeable else a.copy()  # arrays read from Arrow are read-only views
        x, y = torch.from_numpy(writable(data.images)), torch.from_numpy(writable(data.labels))  # (N, C, H, W), (N,)
        model.train()
        _fit(model, x, y, config, num_classes, generator)
        accuracy = float((predict(model, test.images) == test.labels).mean())
    return TrainedClassifier(model, config, test_accuracy=accuracy)


def _fit(
    model: FeatureClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    config: ClassifierConfig,
    num_classes: int,
    generator: torch.Generator,
) -> None:
    """AdamW with a one-cycle schedule on (N, C, H, W) images x and (N,) labels y, plus static."""
    steps_per_epoch = -(-len(x) // config.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=config.epochs * steps_per_epoch)
    shape = tuple(x.shape[1:])
    for epoch in range(config.epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), config.batch_size):
            batch = order[start : start + config.batch_size]
            xb = random_shift(x[batch], generator, config.shift_pixels) if config.shift_augment else x[batch]
            xb = torch.cat([xb, random_static(config.static_per_batch, shape, config, generator)])  # (B + S, C, H, W)
            yb = torch.cat([y[batch], torch.full((config.static_per_batch,), num_classes)])  # (B + S,)
            loss = nn.functional.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        if len(x) > 10_000:  # minutes of work: say where it is
            print(f"yardstick {config.kind}: epoch {epoch + 1}/{config.epochs}, loss {loss.item():.3f}", flush=True)


def data_fingerprint(data: ImageArrays) -> str:
    """A short hash of the images and labels a classifier is trained on: its cache key."""
    digest = hashlib.sha1(np.ascontiguousarray(data.images).tobytes())
    digest.update(b"" if data.labels is None else np.ascontiguousarray(data.labels).tobytes())
    return digest.hexdigest()[:12]


def _load_cached(
    config: ClassifierConfig, weights: Path, meta: Path, channels: int, num_classes: int
) -> TrainedClassifier | None:
    """The cached classifier, or None when there is none or it was trained with another config."""
    if not (weights.is_file() and meta.is_file()):
        return None
    try:
        info = json.loads(meta.read_text())
        if info.get("config") != asdict(config):
            return None
        model = build_classifier(config.kind, channels, num_classes)
        model.load_state_dict(load_file(weights))
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as error:  # truncated or foreign files
        raise ModelFolderError(
            f"yardstick cache {weights.parent} is unreadable ({type(error).__name__}); delete it to retrain"
        ) from None
    model.eval()
    return TrainedClassifier(model, config, test_accuracy=float(info["test_accuracy"]))


def _load_or_train(
    config: ClassifierConfig, cache_dir: Path, data: ImageArrays, test: ImageArrays | None
) -> TrainedClassifier:
    weights, meta = cache_dir / f"{config.kind}.safetensors", cache_dir / f"{config.kind}.json"
    cached = _load_cached(config, weights, meta, data.images.shape[1], data.num_classes)
    if cached is not None:
        return cached
    if len(data.images) > 10_000:
        print(
            f"yardstick: training the {config.kind} classifier on {len(data.images)} images (cached in {cache_dir})",
            flush=True,
        )
    trained = train_classifier(config, data, test)
    cache_dir.mkdir(parents=True, exist_ok=True)
    save_file(trained.model.state_dict(), weights)
    # The JSON is written last: its presence means the weights are complete.
    num_params = sum(p.numel() for p in trained.model.parameters())
    info = {
        "config": asdict(config),
        "test_accuracy": trained.test_accuracy,
        "num_params": num_params,
        "train_images": len(data.images),
        "test_images": None if test is None else len(test.images),
    }
    meta.write_text(json.dumps(info, indent=2) + "\n")
    return trained


def load_or_train_yardstick(
    data: ImageArrays, test: ImageArrays | None = None, cache_dir: Path = DEFAULT_CACHE
) -> Yardstick:
    """The yardstick of a data set: loaded from `cache_dir` when cached for this data, else trained and saved.

    `data` trains the classifiers; `test` measures their accuracy (unset: a held-out part of `data`)."""
    shape = tuple(data.images.shape[1:])
    cnn_config, mlp_config = configs_for(shape)
    key = data_fingerprint(data) + ("" if test is None else "-" + data_fingerprint(test))
    folder = Path(cache_dir) / key
    cnn = _load_or_train(cnn_config, folder, data, test)
    mlp = None if mlp_config is None else _load_or_train(mlp_config, folder, data, test)
    return Yardstick(cnn, mlp, shape, data.num_classes)
