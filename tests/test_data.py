"""The Parquet data layer and `jobs.prepare_data`, on real pyarrow, PIL and a real local Ray."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs import prepare_data
from workers.data.shards import ImageArrays, read_arrays, read_info, write_shards
from workers.data.sources import digits_arrays, folder_arrays
from workers.data.streams import batch_to_arrays, ray_dataset
from workers.errors import DataError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits() -> ImageArrays:
    return digits_arrays()


def test_digits_round_trip_is_exact(tmp_path, digits):
    write_shards(digits, tmp_path / "d")
    back = read_arrays(tmp_path / "d", expect_shape=(1, 8, 8))
    assert back.images.dtype == np.float32 and back.images.shape == (1797, 1, 8, 8)
    np.testing.assert_array_equal(back.images, digits.images)
    np.testing.assert_array_equal(back.labels, digits.labels)
    assert back.labels.dtype == np.int64 and back.captions is None and back.class_names is None


def test_schema_metadata_and_info(tmp_path, digits):
    files = write_shards(digits, tmp_path / "d")
    schema = pq.read_schema(files[0])
    meta = schema.metadata
    assert meta[b"flashdistill.format_version"] == b"1"
    assert json.loads(meta[b"flashdistill.image_shape"]) == [1, 8, 8]
    assert meta[b"flashdistill.num_classes"] == b"10"
    assert str(schema.field("image").type) == "fixed_size_list<element: float>[64]"
    info = read_info(tmp_path / "d")
    assert (info.image_shape, info.num_rows, info.num_classes) == ((1, 8, 8), 1797, 10)
    assert not info.has_captions and len(info.files) == 2


def test_rows_split_across_shards_in_order(tmp_path, digits):
    files = write_shards(digits, tmp_path / "d", rows_per_shard=500)
    assert [f.name for f in files] == [f"part-0000{i}.parquet" for i in range(4)]
    assert [pq.read_metadata(f).num_rows for f in files] == [500, 500, 500, 297]
    np.testing.assert_array_equal(read_arrays(tmp_path / "d").images, digits.images)


def test_unlabelled_captioned_set_keeps_nulls_and_captions(tmp_path):
    images = np.linspace(-1, 1, 5 * 3 * 2 * 2, dtype=np.float32).reshape(5, 3, 2, 2)
    write_shards(ImageArrays(images, captions=[f"c{i}" for i in range(5)]), tmp_path / "u")
    back = read_arrays(tmp_path / "u")
    assert back.labels is None and back.captions == ["c0", "c1", "c2", "c3", "c4"]
    assert read_info(tmp_path / "u").num_classes == 0


def test_ray_data_batches_match_the_arrays(tmp_path, digits, ray_local):
    subset = ImageArrays(digits.images[:300], digits.labels[:300])
    write_shards(subset, tmp_path / "d", rows_per_shard=128)
    seen_images, seen_labels = [], []
    for batch in ray_dataset(tmp_path / "d").iter_batches(batch_size=64, batch_format="numpy"):
        images, labels = batch_to_arrays(batch, (1, 8, 8))
        assert images.dtype == np.float32 and images.shape[1:] == (1, 8, 8)
        assert labels.dtype == np.int64 and labels.shape == (len(images),)
        seen_images.append(images)
        seen_labels.append(labels)
    images, labels = np.concatenate(seen_images), np.concatenate(seen_labels)

    # Ray may reorder blocks: compare sorted by the image bytes, keeping each label with its image.
    def order(x: np.ndarray) -> np.ndarray:
        return np.lexsort(x.reshape(len(x), -1).T)

    got, want = order(images), order(subset.images)
    np.testing.assert_array_equal(images[got], subset.images[want])
    np.testing.assert_array_equal(labels[got], subset.labels[want])


def test_ray_data_unlabelled_batches_give_no_labels(tmp_path, ray_local):
    images = np.zeros((10, 1, 2, 2), dtype=np.float32)
    write_shards(ImageArrays(images), tmp_path / "u")
    batches = list(ray_dataset(tmp_path / "u").iter_batches(batch_size=10, batch_format="numpy"))
    out_images, out_labels = batch_to_arrays(batches[0], (1, 2, 2))
    assert out_images.shape == (10, 1, 2, 2) and out_labels is None


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist.*prepare_data"):
        read_info(tmp_path / "nowhere")


def test_corrupt_shard_is_named(tmp_path, digits):
    write_shards(digits, tmp_path / "d", rows_per_shard=1000)
    bad = tmp_path / "d" / "part-00001.parquet"
    bad.write_bytes(b"not parquet at all" * 10)
    with pytest.raises(DataError) as caught:
        read_arrays(tmp_path / "d")
    assert "part-00001.parquet" in str(caught.value) and "\n" not in str(caught.value)


def test_wrong_shape_is_reported_with_both_shapes(tmp_path, digits):
    write_shards(digits, tmp_path / "d")
    with pytest.raises(DataError, match=r"images of shape \(1, 8, 8\).*expected \(3, 64, 64\)"):
        read_arrays(tmp_path / "d", expect_shape=(3, 64, 64))


def test_out_of_range_images_are_refused(tmp_path):
    with pytest.raises(DataError, match="expected \\[-1, 1\\]"):
        write_shards(ImageArrays(np.full((2, 1, 2, 2), 255, dtype=np.float32)), tmp_path / "x")


def test_overwrite_refusal_keeps_the_original(tmp_path, digits):
    write_shards(digits, tmp_path / "d")
    other = ImageArrays(np.zeros((3, 1, 8, 8), dtype=np.float32))
    with pytest.raises(DataError, match="already holds a data set"):
        write_shards(other, tmp_path / "d")
    np.testing.assert_array_equal(read_arrays(tmp_path / "d").images, digits.images)
    write_shards(other, tmp_path / "d", overwrite=True)
    assert read_info(tmp_path / "d").num_rows == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temp or old folders left


def _make_folder(root: Path) -> Path:
    from PIL import Image

    folder = root / "imgs"
    (folder / "sub").mkdir(parents=True)
    wide = Image.new("RGB", (20, 10), (0, 255, 0))  # green sides that the centre crop must drop
    wide.paste((255, 0, 0), (5, 0, 15, 10))
    wide.save(folder / "red.png")
    Image.new("RGB", (8, 8), (0, 0, 255)).save(folder / "sub" / "blue.png")
    Image.new("L", (12, 12), 0).save(folder / "black.png")
    (root / "labels.csv").write_text("file,label\nred.png,warm\nsub/blue.png,cool\nblack.png,cool\n")
    lines = [
        {"file": "red.png", "caption": "a red square"},
        {"file": "sub/blue.png", "caption": "blue"},
        {"file": "black.png", "caption": "night"},
    ]
    (root / "captions.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return folder


def test_folder_arrays_reads_labels_and_captions(tmp_path):
    folder = _make_folder(tmp_path)
    arrays = folder_arrays(
        folder, size=4, channels=3, labels_file=tmp_path / "labels.csv", captions_file=tmp_path / "captions.jsonl"
    )
    # Files sort as black.png, red.png, sub/blue.png.
    assert arrays.images.shape == (3, 3, 4, 4) and arrays.images.dtype == np.float32
    np.testing.assert_allclose(arrays.images[0], -1.0)
    np.testing.assert_allclose(arrays.images[1, :, 0, 0], [1.0, -1.0, -1.0])
    np.testing.assert_allclose(arrays.images[2, :, 0, 0], [-1.0, -1.0, 1.0])
    assert arrays.class_names == ["cool", "warm"] and arrays.labels.tolist() == [0, 1, 0]
    assert arrays.captions == ["night", "a red square", "blue"]
    grey = folder_arrays(folder, size=4, channels=1)
    assert grey.images.shape == (3, 1, 4, 4) and grey.labels is None


def test_folder_arrays_errors_name_the_file(tmp_path):
    folder = _make_folder(tmp_path)
    (tmp_path / "short.csv").write_text("file,label\nred.png,warm\n")
    with pytest.raises(DataError, match="no row for 2 image.*black.png"):
        folder_arrays(folder, size=4, labels_file=tmp_path / "short.csv")
    (tmp_path / "extra.csv").write_text("file,caption\nred.png,a\nsub/blue.png,b\nblack.png,c\nghost.png,d\n")
    with pytest.raises(DataError, match="ghost.png"):
        folder_arrays(folder, size=4, captions_file=tmp_path / "extra.csv")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(DataError, match="cannot read image .*broken.jpg"):
        folder_arrays(folder, size=4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no"):
        folder_arrays(tmp_path / "empty", size=4)


def test_prepare_data_job_writes_then_is_idempotent(tmp_path, capsys):
    out = tmp_path / "digits"
    prepare_data.main(["--out", str(out), "--rows-per-shard", "1000"])
    assert "wrote 1797 rows of shape (1, 8, 8), 10 classes" in capsys.readouterr().out
    prepare_data.main(["--out", str(out)])
    assert "already holds this data set" in capsys.readouterr().out
    folder = _make_folder(tmp_path)
    folder_args = ["--source", "folder", "--folder", str(folder), "--size", "4", "--out", str(out)]
    with pytest.raises(DataError, match="different data set.*--overwrite"):
        prepare_data.main(folder_args)
    prepare_data.main([*folder_args, "--labels", str(tmp_path / "labels.csv"), "--overwrite"])
    info = read_info(out)
    assert info.image_shape == (3, 4, 4) and info.class_names == ["cool", "warm"]


def test_prepare_data_cli_error_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "jobs.prepare_data", "--source", "folder", "--out", str(tmp_path / "x")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error:") and result.stderr.count("\n") == 1
    assert "--folder" in result.stderr and "Traceback" not in result.stderr
