"""Fashion-MNIST: the IDX reader, the padding, the error paths, the real files, and its yardstick's floor."""

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jobs import prepare_data
from workers.data.shards import read_arrays, read_info
from workers.data.sources import FASHION_MNIST_CLASSES, FASHION_MNIST_FILES, FASHION_MNIST_FOLDER, fashion_mnist_arrays
from workers.errors import DataError

REPO = Path(__file__).resolve().parents[1]
REAL_FILES = FASHION_MNIST_FOLDER / FASHION_MNIST_FILES["train"][0]


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: 00 00 08 <ndim>, the sizes as big-endian int32, the values."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_split(folder: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    image_name, label_name = FASHION_MNIST_FILES[split]
    (folder / image_name).write_bytes(gzip.compress(idx_bytes(images)))
    (folder / label_name).write_bytes(gzip.compress(idx_bytes(labels)))


@pytest.fixture
def idx_folder(tmp_path) -> Path:
    """Small IDX files in the original layout: 30 training and 20 test images of 28x28, labels 0-9."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "idx"
    for split, count in (("train", 30), ("test", 20)):
        write_split(folder, split, rng.integers(0, 256, (count, 28, 28)), np.arange(count) % 10)
    return folder


def test_reader_pads_with_the_background_and_scales(idx_folder):
    arrays = fashion_mnist_arrays("train", idx_folder)
    assert arrays.images.shape == (30, 1, 32, 32) and arrays.images.dtype == np.float32
    assert arrays.labels.tolist() == [i % 10 for i in range(30)] and arrays.class_names == FASHION_MNIST_CLASSES
    # The 2-pixel border is the background (0 -> -1); the middle 28x28 is the original, scaled to [-1, 1].
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert (arrays.images[:, 0][:, border] == -1.0).all()
    with gzip.open(idx_folder / FASHION_MNIST_FILES["train"][0]) as stream:
        original = np.frombuffer(stream.read(), np.uint8, offset=16).reshape(30, 28, 28)
    np.testing.assert_array_equal(arrays.images[:, 0, 2:30, 2:30], original.astype(np.float32) / 127.5 - 1.0)


def test_prepare_data_writes_both_splits_apart(idx_folder, tmp_path, capsys):
    out = tmp_path / "fashion"
    prepare_data.main(["--source", "fashion-mnist", "--folder", str(idx_folder), "--out", str(out)])
    train, test = read_info(out / "train"), read_info(out / "test")
    assert (train.num_rows, test.num_rows) == (30, 20) and train.image_shape == (1, 32, 32)
    assert train.class_names == FASHION_MNIST_CLASSES and test.num_classes == 10
    assert read_arrays(out / "test").images.shape == (20, 1, 32, 32)
    prepare_data.main(["--source", "fashion-mnist", "--folder", str(idx_folder), "--out", str(out)])
    assert capsys.readouterr().out.count("nothing to do") == 2  # a rerun finds both splits in place


def test_missing_files_name_the_package_and_the_flag(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.prepare_data",
            "--source",
            "fashion-mnist",
            "--folder",
            str(tmp_path / "nowhere"),
            "--out",
            str(tmp_path / "out"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "apt-get install dataset-fashion-mnist" in result.stderr and "--folder" in result.stderr


@pytest.mark.parametrize(
    "damage", ["truncated gzip", "truncated data", "wrong magic", "label out of range", "counts differ"]
)
def test_a_damaged_idx_file_is_refused_with_its_name(idx_folder, damage):
    image_file, label_file = (idx_folder / name for name in FASHION_MNIST_FILES["train"])
    rng = np.random.default_rng(1)
    if damage == "truncated gzip":
        image_file.write_bytes(image_file.read_bytes()[:-40])
        bad = image_file
    elif damage == "truncated data":
        image_file.write_bytes(gzip.compress(idx_bytes(rng.integers(0, 256, (30, 28, 28)))[:-100]))
        bad = image_file
    elif damage == "wrong magic":
        label_file.write_bytes(gzip.compress(b"\x00\x00\x0d\x01" + idx_bytes(np.arange(30) % 10)[4:]))
        bad = label_file
    elif damage == "label out of range":
        label_file.write_bytes(gzip.compress(idx_bytes(np.full(30, 12))))
        bad = label_file
    else:
        label_file.write_bytes(gzip.compress(idx_bytes(np.arange(29) % 10)))
        bad = label_file
    with pytest.raises(DataError, match=str(bad.name).replace(".", r"\.")):
        fashion_mnist_arrays("train", idx_folder)


@pytest.mark.skipif(not REAL_FILES.is_file(), reason=f"{REAL_FILES} missing: apt-get install dataset-fashion-mnist")
def test_the_real_files_read_as_fashion_mnist():
    train, test = fashion_mnist_arrays("train", limit=300), fashion_mnist_arrays("test", limit=300)
    assert train.images.shape == (300, 1, 32, 32) and test.images.shape == (300, 1, 32, 32)
    assert set(train.labels.tolist()) == set(range(10))
    assert (train.images[:, :, :2] == -1).all() and train.images.max() == 1.0  # padded border, full range inside
    assert 0.2 < float((train.images > -1).mean()) < 0.6  # garments cover a good part of each frame


def shapes(count: int, seed: int):
    """32x32 images of ten classes a classifier can tell apart: a bright bar at a class's own place (a 5 x 2
    grid, far apart enough for shifts of 2 pixels), jittered by a pixel, plus noise."""
    from workers.data.shards import ImageArrays

    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    images = np.full((count, 1, 32, 32), -1.0, np.float32)
    for i, label in enumerate(labels):
        top, left = 2 + 6 * (label % 5) + rng.integers(-1, 2), 2 + 15 * (label // 5) + rng.integers(-1, 2)
        images[i, 0, top : top + 4, left : left + 12] = 1.0
    images = np.clip(images + rng.normal(0, 0.1, images.shape), -1, 1).astype(np.float32)
    return ImageArrays(images, labels.astype(np.int64), class_names=list(FASHION_MNIST_CLASSES))


def test_the_32x32_yardstick_floor_sits_below_noise_and_blur(tmp_path):
    from workers.evaluation.quality import ReferenceSet, evaluate_images, gaussian_blur, real_data_row
    from workers.evaluation.yardstick import load_or_train_yardstick

    train, test = shapes(1000, 0), shapes(300, 1)
    yardstick = load_or_train_yardstick(train, test, tmp_path / "yardstick")
    assert yardstick.mlp is None and yardstick.cnn.test_accuracy > 0.9  # tested on the test split
    reference = ReferenceSet(test, yardstick)
    floor = real_data_row(train, reference, num=200, seed=0, fd_sizes=(400,))
    assert set(floor) >= {"fd", "fd_400", "precision", "recall", "class_accuracy"} and "fd_pixels" not in floor
    assert floor["class_accuracy"] > 0.9 and floor["recall"] > 0.5
    noise = np.clip(np.random.default_rng(2).normal(0, 0.5, (200, 1, 32, 32)), -1, 1).astype(np.float32)
    blurred = gaussian_blur(train.images[:200], 1.5)
    assert (
        floor["fd"]
        < evaluate_images(blurred, train.labels[:200], reference)["fd"]
        < evaluate_images(noise, None, reference)["fd"]
    )
    assert floor["fd_400"] < floor["fd"]  # more samples, less upward bias


@pytest.mark.parametrize("benchmark", ["fashion", "fashion_gpu"])
def test_the_benchmark_dry_run_checks_every_student_and_starts_nothing(benchmark, tmp_path, capsys):
    from jobs.benchmark import main

    assert main([benchmark, "--output", str(tmp_path / "bench"), "--dry-run"]) is None
    out = capsys.readouterr().out
    assert all(f"{name}:" in out for name in ("student1", "student4", "if3")) and "dry run" in out
    assert not (tmp_path / "bench").exists()


def test_a_benchmark_student_with_a_bad_override_is_refused_before_any_work(tmp_path):
    from jobs.benchmark import main
    from workers.errors import ConfigError

    with pytest.raises(ConfigError, match="student.sampler"):  # a one-step student cannot use noise correction
        main(
            [
                "fashion",
                "--output",
                str(tmp_path),
                "--dry-run",
                "--set",
                "distill_overrides=[student.sampler=noise_corrected_ddim]",
            ]
        )


@pytest.mark.parametrize("benchmark", ["fashion", "fashion_gpu"])
def test_every_row_of_the_benchmark_table_logs_to_mlflow_under_a_key_of_its_own(benchmark, tmp_path):
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from jobs.cli import config_file
    from orchestrator.benchmark import model_rows, row_name, tracked_metrics
    from orchestrator.config import BenchmarkConfig
    from orchestrator.config_loading import load_config
    from orchestrator.report import BENCHMARK_COLUMNS

    config = load_config(BenchmarkConfig, config_file(benchmark), [])
    rows = [{"name": "real_data", "fd": 3.0}]
    for i, (_, kind, _, steps, sampler) in enumerate(model_rows(config, tmp_path, config.students, tmp_path)):
        rows.append({"name": row_name(kind, steps, sampler), **{key: float(i) for key, *_ in BENCHMARK_COLUMNS}})
    metrics = tracked_metrics(rows)
    assert len(metrics) == 1 + (len(rows) - 1) * len(BENCHMARK_COLUMNS)  # no two rows share a key

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("benchmark"))
    now = int(time.time() * 1000)
    client.log_batch(run.info.run_id, metrics=[Metric(key, value, now, 0) for key, value in metrics.items()])
    assert client.get_run(run.info.run_id).data.metrics == metrics
