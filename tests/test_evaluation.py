"""The yardstick: classifiers, distances, reference points and the evaluate job (on the digits)."""

import importlib.util
import json
import shutil
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from workers.data.shards import ImageArrays
from workers.data.sources import digits_arrays
from workers.errors import DataError, ModelFolderError, UserError
from workers.evaluation import yardstick as evaluation
from workers.evaluation.distances import frechet_distance, frechet_distance_from_stats, precision_recall
from workers.evaluation.inception import inception_fid
from workers.evaluation.quality import ReferenceSet, evaluate_images, reference_points
from workers.evaluation.yardstick import CNN_CONFIG, features, load_or_train_yardstick, stratified_split


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("yardstick")


@pytest.fixture(scope="module")
def digits():
    return digits_arrays()


@pytest.fixture(scope="module")
def yardstick(cache_dir, digits):
    return load_or_train_yardstick(digits, None, cache_dir)  # trained once for the module


@pytest.fixture(scope="module")
def reference(digits, yardstick):
    return ReferenceSet(digits, yardstick)


def test_classifiers_are_accurate_and_load_from_cache(yardstick, cache_dir, digits, monkeypatch):
    assert yardstick.cnn.test_accuracy >= 0.97
    assert yardstick.mlp.test_accuracy >= 0.95
    assert len(list(cache_dir.glob("*/cnn.safetensors"))) == 1 and len(list(cache_dir.glob("*/cnn.json"))) == 1

    def no_training(*_args, **_kwargs):
        raise AssertionError("the cached yardstick should have been loaded, not retrained")

    monkeypatch.setattr(evaluation, "train_classifier", no_training)
    loaded = load_or_train_yardstick(digits, None, cache_dir)
    assert loaded.cnn.test_accuracy == yardstick.cnn.test_accuracy
    for name in ("cnn", "mlp"):
        loaded_model, trained_model = getattr(loaded, name).model, getattr(yardstick, name).model
        np.testing.assert_array_equal(features(loaded_model, digits.images), features(trained_model, digits.images))


def test_corrupt_cache_is_a_clear_error(tmp_path, cache_dir, yardstick, digits):
    shutil.copytree(cache_dir, tmp_path / "cache")
    next((tmp_path / "cache").glob("*/cnn.safetensors")).write_bytes(b"not safetensors")
    with pytest.raises(ModelFolderError, match="delete it to retrain"):
        load_or_train_yardstick(digits, None, tmp_path / "cache")


def test_another_data_set_gets_its_own_classifiers(tmp_path, digits):
    few = ImageArrays(digits.images[:400], digits.labels[:400])
    load_or_train_yardstick(few, None, tmp_path / "cache")
    load_or_train_yardstick(ImageArrays(few.images[::-1].copy(), few.labels[::-1].copy()), None, tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*/cnn.json"))) == 2


def test_frechet_distance_identical_and_symmetric():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(500, 16)), rng.normal(0.3, 1.5, size=(400, 16))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, b) > 1.0
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-6)


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 1.0, 0.0, -0.5])
    var1, var2 = np.array([1.0, 4.0, 0.25, 2.0]), np.array([2.0, 1.0, 1.0, 0.5])
    # For diagonal covariances the matrix square root is elementwise.
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(var1 + var2 - 2 * np.sqrt(var1 * var2))
    exact = frechet_distance_from_stats(mu1, np.diag(var1), mu2, np.diag(var2))
    assert exact == pytest.approx(expected, rel=1e-9)
    rng = np.random.default_rng(1)
    sampled = frechet_distance(rng.normal(mu1, np.sqrt(var1), (40_000, 4)), rng.normal(mu2, np.sqrt(var2), (40_000, 4)))
    assert sampled == pytest.approx(expected, rel=0.03)


def test_frechet_distance_survives_singular_covariances():
    rng = np.random.default_rng(2)
    a = np.concatenate([rng.normal(size=(50, 3)), np.zeros((50, 5))], axis=1)  # rank 3 of 8 dims
    b = np.concatenate([rng.normal(size=(50, 3)), np.zeros((50, 5))], axis=1)
    assert np.isfinite(frechet_distance(a, b))


def test_precision_recall_extremes_and_partial_coverage():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(600, 8))
    assert precision_recall(real, real) == pytest.approx((1.0, 1.0))
    assert precision_recall(real, real + 100.0) == pytest.approx((0.0, 0.0))
    # Two real clusters, fakes from only one: the fakes are realistic but half the reals are missed.
    # (2-D, so that k-NN balls of a few hundred points cover their cluster well.)
    two_modes = np.concatenate([rng.normal(size=(300, 2)), rng.normal(size=(300, 2)) + 50.0])
    precision, recall = precision_recall(two_modes, rng.normal(size=(300, 2)))
    assert precision > 0.9 and 0.4 < recall < 0.55
    # Chunking is only a memory bound: it must not change the answer.
    fake = rng.normal(0.5, 1.0, size=(500, 8))
    assert precision_recall(real, fake, chunk_size=7) == precision_recall(real, fake)


def test_reference_points_are_ordered(reference):
    rows = reference_points(reference, num=600, seed=0)
    assert set(rows) == {"real_vs_real", "blurred_data", "class_mean_images", "gaussian_noise"}
    fd = {name: row["fd"] for name, row in rows.items()}
    assert fd["real_vs_real"] < fd["blurred_data"] < fd["gaussian_noise"]
    assert rows["real_vs_real"]["fd_mlp"] < rows["blurred_data"]["fd_mlp"] < rows["gaussian_noise"]["fd_mlp"]
    # Collapsing each class to its mean loses coverage.
    assert rows["class_mean_images"]["recall"] < 0.5 * rows["real_vs_real"]["recall"]
    assert rows["gaussian_noise"]["class_accuracy"] is None


def test_evaluate_images_on_held_out_real_digits(reference, digits):
    _, test = stratified_split(digits.labels, CNN_CONFIG.test_fraction, CNN_CONFIG.split_seed)
    metrics = evaluate_images(digits.images[test], digits.labels[test], reference)
    assert metrics["class_accuracy"] >= 0.97
    assert metrics["precision"] > 0.8 and metrics["recall"] > 0.8
    assert evaluate_images(digits.images[test], None, reference)["class_accuracy"] is None


def test_evaluate_images_rejects_bad_input(reference, digits):
    with pytest.raises(DataError, match=r"\(20, 1, 16, 16\).*\(1797, 1, 8, 8\)"):
        evaluate_images(np.zeros((20, 1, 16, 16), np.float32), None, reference)
    with pytest.raises(DataError, match="must be in"):
        evaluate_images(digits.images[:50] * 127.5 + 127.5, None, reference)
    with pytest.raises(DataError, match="labels"):
        evaluate_images(digits.images[:50], digits.labels[:49], reference)


def test_evaluate_job_on_npz(tmp_path, cache_dir, digits, capsys, yardstick):
    from jobs.evaluate import main

    samples, out = tmp_path / "samples.npz", tmp_path / "out" / "metrics.json"
    np.savez(samples, images=digits.images[:300], labels=digits.labels[:300])
    main(["--samples", str(samples), "--json", str(out), "--yardstick-cache", str(cache_dir), "--reference-points"])
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split() == ["metric", "value", "real_vs_real", "blurred_data", "class_mean_images",
                                               "gaussian_noise"]  # fmt: skip
    assert any(line.split()[0] == "class_accuracy" for line in printed.splitlines()[1:])
    written = json.loads(out.read_text())
    assert written["num_images"] == 300
    assert written["metrics"]["class_accuracy"] >= 0.97
    assert written["metrics"]["fd"] < written["reference_points"]["blurred_data"]["fd"]


def test_evaluate_job_samples_a_model_folder(tmp_path, cache_dir, digits, monkeypatch, capsys, yardstick):
    from jobs.evaluate import main

    calls = []

    def fake_sample_from_folder(model_dir, steps, num, seed, batch_size=500, sampler="ddim"):
        calls.append((model_dir, steps, num, seed))
        return SimpleNamespace(images=digits.images[:num], labels=digits.labels[:num], seconds_per_image=0.25)

    # A stand-in module, so this test needs neither a trained model nor the sampling stack.
    monkeypatch.setitem(sys.modules, "jobs.sample", SimpleNamespace(sample_from_folder=fake_sample_from_folder))
    results = main(["--model", str(tmp_path), "--steps", "2", "--num", "200", "--yardstick-cache", str(cache_dir)])
    assert calls == [(tmp_path, 2, 200, 0)]
    assert results["metrics"]["seconds_per_image"] == 0.25 and results["num_images"] == 200
    assert "seconds_per_image" in capsys.readouterr().out


def test_evaluate_job_rejects_bad_npz(tmp_path, cache_dir):
    from jobs.evaluate import main

    samples = tmp_path / "bad.npz"
    np.savez(samples, pictures=np.zeros((10, 1, 8, 8), np.float32))
    with pytest.raises(DataError, match="no 'images' array"):
        main(["--samples", str(samples), "--yardstick-cache", str(cache_dir)])
    np.savez(samples, images=np.zeros((10, 8, 8), np.float32))
    with pytest.raises(DataError, match=r"shape \(10, 8, 8\)"):
        main(["--samples", str(samples), "--yardstick-cache", str(cache_dir)])


def test_inception_fid_needs_a_local_weights_file(tmp_path, digits):
    from jobs.evaluate import evaluate_samples

    with pytest.raises(UserError, match="not found"):
        inception_fid(digits.images[:10], digits.images[10:20], tmp_path / "missing.pth")
    # The job checks before any work: no yardstick is trained into the cache.
    with pytest.raises(UserError, match="not found"):
        evaluate_samples(digits.images[:10], None, None, tmp_path / "missing.pth", yardstick_cache=tmp_path / "ys")
    assert not (tmp_path / "ys").exists()


@pytest.mark.skipif(importlib.util.find_spec("torch_fidelity") is not None, reason="torch-fidelity is installed")
def test_inception_fid_without_torch_fidelity_says_how_to_install(tmp_path, digits):
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"")
    with pytest.raises(UserError, match="pip install torch-fidelity"):
        inception_fid(digits.images[:10], digits.images[10:20], weights)


def test_reference_points_without_labels_skip_class_means(yardstick, digits):
    unlabelled = ImageArrays(images=digits.images)
    rows = reference_points(ReferenceSet(unlabelled, yardstick), num=200, seed=1)
    assert "class_mean_images" not in rows and rows["real_vs_real"]["class_accuracy"] is None


def test_a_mean_over_sampling_seeds_and_its_spread_reach_the_demo_table(tiny_teacher, yardstick, digits):
    from orchestrator.report import format_table
    from workers.evaluation.students import StudentEvaluator

    teacher = tiny_teacher / "teacher"
    single = [StudentEvaluator(digits, 50, seed, yardstick=yardstick)(teacher, 2) for seed in (3, 4)]
    both = StudentEvaluator(digits, 50, 3, repeats=2, yardstick=yardstick)(teacher, 2)
    assert both["fd"] == pytest.approx((single[0]["fd"] + single[1]["fd"]) / 2)
    assert both["recall"] == pytest.approx((single[0]["recall"] + single[1]["recall"]) / 2)
    assert both["fd_std"] == pytest.approx(abs(single[0]["fd"] - single[1]["fd"]) / 2) and both["fd_std"] > 0
    assert "fd_std" not in single[0]
    row = format_table([{"model": "m", **both}]).splitlines()[-1]
    assert f"{both['fd']:.2f} ± {both['fd_std']:.2f}" in row
