"""The user-facing commands: sampling a saved folder, and one-line errors for bad input."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).parents[1]


def run_job(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT, timeout=600)


def assert_one_line_error(done: subprocess.CompletedProcess, *words: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    error_lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1, done.stderr
    for word in words:
        assert word in error_lines[0], (word, error_lines[0])


def test_sample_job_writes_balanced_npz_and_grid(tiny_teacher, tmp_path):
    from jobs.sample import main

    result = main(
        [
            "--model",
            str(tiny_teacher / "teacher"),
            "--steps",
            "5",
            "--num",
            "25",
            "--seed",
            "3",
            "--out",
            str(tmp_path / "s.npz"),
            "--grid",
            str(tmp_path / "g.png"),
        ]
    )
    saved = np.load(tmp_path / "s.npz", allow_pickle=False)
    assert saved["images"].shape == (25, 1, 8, 8) and saved["images"].dtype == np.float32
    assert saved["images"].min() >= -1 and saved["images"].max() <= 1
    assert np.bincount(saved["labels"], minlength=10).tolist() == [3, 3, 3, 3, 3, 2, 2, 2, 2, 2]
    assert (tmp_path / "g.png").stat().st_size > 0 and result.network_passes == 5
    again = main(
        [
            "--model",
            str(tiny_teacher / "teacher"),
            "--steps",
            "5",
            "--num",
            "25",
            "--seed",
            "3",
            "--out",
            str(tmp_path / "t.npz"),
        ]
    )
    np.testing.assert_array_equal(again.images, saved["images"])  # a seed fixes the samples


def test_sample_refuses_a_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "unet").mkdir()
    assert_one_line_error(
        run_job("jobs.sample", "--model", str(tmp_path), "--steps", "2", "--out", str(tmp_path / "x.npz")),
        "not a model folder",
    )


def test_sample_refuses_pickled_weights_without_loading_them(tiny_teacher, tmp_path):
    import shutil

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_teacher / "teacher", folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save({"w": torch.zeros(1)}, folder / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    assert_one_line_error(
        run_job("jobs.sample", "--model", str(folder), "--steps", "2", "--out", str(tmp_path / "x.npz")),
        "pickle",
        "safetensors",
    )


def test_teacher_config_mistakes_are_one_line_errors(tmp_path):
    config = tmp_path / "teacher.yaml"
    config.write_text("steps: 10\nunet: {chanels: 3}\n")
    assert_one_line_error(
        run_job("jobs.train_teacher", "--config", str(config), "--dry-run"), "unet.chanels", "unknown field"
    )
    config.write_text("steps: ten\n")
    assert_one_line_error(run_job("jobs.train_teacher", "--config", str(config), "--dry-run"), "steps", "expected int")
    config.write_text("data: /nonexistent/data\n")
    assert_one_line_error(run_job("jobs.train_teacher", "--config", str(config), "--dry-run"), "/nonexistent/data")


def test_teacher_refuses_data_of_the_wrong_shape(tmp_path, ray_local):
    from orchestrator.config import TeacherTrainingConfig
    from orchestrator.teacher_trainer import train_teacher
    from workers.data.shards import ImageArrays, write_shards
    from workers.errors import ConfigError

    write_shards(ImageArrays(np.zeros((4, 3, 16, 16), np.float32), np.arange(4)), tmp_path / "rgb")
    try:
        train_teacher(TeacherTrainingConfig(data=tmp_path / "rgb", output=tmp_path / "t"))
    except ConfigError as error:
        assert "[3, 16, 16]" in str(error) and "unet.channels" in str(error)
    else:
        raise AssertionError("wrong-shaped data was accepted")


def test_teacher_training_is_reproducible(tiny_teacher, tmp_path):
    """The same config and seed train the same teacher, bit for bit, across epochs (30 steps of 28 per epoch)."""
    from safetensors.torch import load_file

    from orchestrator.config import TeacherTrainingConfig
    from orchestrator.config_loading import load_config
    from orchestrator.teacher_trainer import train_teacher

    config = load_config(
        TeacherTrainingConfig,
        ROOT / "jobs" / "configs" / "teacher_tiny.yaml",
        [f"data={tiny_teacher / 'data'}", f"output={tmp_path / 'teacher'}", "steps=30"],
    )  # as the fixture
    train_teacher(config)
    [first], [again] = (
        sorted((folder / "unet").glob("*.safetensors")) for folder in (tiny_teacher / "teacher", tmp_path / "teacher")
    )
    first, again = load_file(first), load_file(again)
    assert first.keys() == again.keys()
    for name in first:
        assert torch.equal(first[name], again[name]), name
