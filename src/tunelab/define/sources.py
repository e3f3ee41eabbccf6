"""A user's own images: an `.npz` of four arrays, or a folder of class folders, checked into arrays.

`dataset:` in an experiment names a built-in dataset (`mnist`, `fashion_mnist`: fetched and
verified against pinned digests, `tunelab.define.data`) or one of these:

- `{npz: PATH}`: arrays `x_train, y_train, x_test, y_test`; images `(N, H, W)` or `(N, H, W, C)`
  with C = 1 or 3, uint8 (or floats in [0, 1] or [0, 255]: the range is inferred and recorded);
  labels the integers 0..K-1.
- `{folder: PATH}`: `train/<class>/*` and `test/<class>/*` PNG or JPEG files (the layout of
  `tfds.ImageFolder`), classes in sorted order; decoded once into a cache keyed by the digest of
  the files, so a second run reads one array file. `image_size: [H, W]` resizes every image
  (and makes grey, RGB and RGBA images agree); without it, every image must have one size and one
  kind of channels. The images are kept in one fixed shuffled order, not class by class, so a
  validation split of the last images holds every class.

Paths are relative to the experiment file. Whatever is wrong is one line that names the file and
says what to fix (`DataError`); the images a model sees are always `(N, H, W, C)` pixels in
[0, 255], and the data's identity is a SHA-256 over each array's dtype, shape and bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import Field, PositiveInt, StrictStr, field_validator

from tunelab.define.data import (
    ARRAY_NAMES,
    DataError,
    Dataset,
    builtin_dataset,
    default_data_dir,
    identity_digest,
)
from tunelab.define.space import StrictModel

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GREY_MODES = ("L", "1", "I", "I;16", "F")
COLOUR_MODES = ("RGB", "P", "CMYK", "YCbCr")
ALPHA_MODES = ("RGBA", "LA", "PA")
FOLDER_CACHE = "folders"
FOLDER_ORDER_SEED = 0  # the images of a folder dataset, in one fixed shuffled order


class NpzData(StrictModel):
    """`dataset: {npz: PATH}`: the four arrays of a user's images."""

    npz: StrictStr = Field(description="an .npz with x_train, y_train, x_test, y_test")
    name: StrictStr | None = Field(None, description="the dataset's name in records (file stem)")


class FolderData(StrictModel):
    """`dataset: {folder: PATH}`: train/<class>/* and test/<class>/* image files."""

    folder: StrictStr = Field(description="a folder with train/<class>/ and test/<class>/")
    image_size: tuple[PositiveInt, PositiveInt] | None = Field(
        None, description="[height, width] every image is resized to (and made one kind)"
    )
    name: StrictStr | None = Field(None, description="the dataset's name in records (folder name)")

    @field_validator("image_size", mode="before")
    @classmethod
    def _square(cls, value: Any) -> Any:
        return (value, value) if isinstance(value, int) and not isinstance(value, bool) else value


UserData = NpzData | FolderData


def load_dataset(
    data: str | UserData,
    base: Path,
    *,
    user_path: Path | None = None,
    report: Callable[[str], None] = lambda _: None,
) -> Dataset:
    """A built-in dataset (fetched, verified; `user_path` is --data-file) or a user's own
    (paths relative to `base`, the experiment's folder), checked.

    Raises:
        DataError: one line naming the file and what to fix.
    """
    if isinstance(data, str):
        return builtin_dataset(data, user_path=user_path, report=report)
    if isinstance(data, NpzData):
        path = (base / data.npz).resolve()
        return npz_dataset(path, data.name or path.stem)
    folder = (base / data.folder).resolve()
    return folder_dataset(folder, data.name or folder.name, data.image_size, report)


def load_origin(origin: str, report: Callable[[str], None] = lambda _: None) -> Dataset:
    """The dataset a record names (its `Dataset.origin`), loaded again from where it was."""
    data = json.loads(origin)
    if isinstance(data, str):
        return load_dataset(data, Path("/"), report=report)
    if "npz" in data:
        return load_dataset(NpzData.model_validate(data), Path("/"), report=report)
    return load_dataset(FolderData.model_validate(data), Path("/"), report=report)


# --- arrays: checks shared by every source ---------------------------------------------


def npz_dataset(path: Path, name: str) -> Dataset:
    """Read and check an .npz of a user's images."""
    if not path.is_file():
        raise DataError(f"dataset.npz: {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [n for n in ARRAY_NAMES if n not in npz.files]
            if missing:
                raise DataError(
                    f"{path}: missing array {missing[0]!r}; an .npz needs "
                    f"{', '.join(ARRAY_NAMES)} (it has {', '.join(npz.files) or 'none'})"
                )
            arrays = {n: np.asarray(npz[n]) for n in ARRAY_NAMES}
            names = npz["class_names"].tolist() if "class_names" in npz.files else None
    except DataError:
        raise
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: not a readable .npz ({error})") from None
    origin = json.dumps({"npz": str(path), "name": name})
    dataset = checked_dataset(
        arrays, name=name, source=f"file {path}", where=str(path), names=names
    )
    return replace(dataset, origin=origin)


def checked_dataset(
    arrays: dict[str, npt.NDArray[Any]],
    *,
    name: str,
    source: str,
    where: str,
    names: list[str] | None = None,
) -> Dataset:
    """User arrays checked and brought to (N, H, W, C) pixels in [0, 255] with labels 0..K-1."""
    images, pixel_range = {}, ""
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        images[split], pixel_range = _images(x, f"{where}: x_{split}")
        arrays[f"y_{split}"] = _labels(y, f"{where}: y_{split}")
        if len(images[split]) != len(arrays[f"y_{split}"]):
            raise DataError(
                f"{where}: x_{split} has {len(images[split])} images but y_{split} has "
                f"{len(arrays[f'y_{split}'])} labels; they must be as many"
            )
    train, test = images["train"].shape[1:], images["test"].shape[1:]
    if train != test:
        raise DataError(
            f"{where}: train images are {_shape(train)} but test images are {_shape(test)}; "
            "they must have one size and number of channels"
        )
    classes = int(max(arrays["y_train"].max(), arrays["y_test"].max())) + 1
    present = set(np.unique(arrays["y_train"]).tolist())
    absent = [c for c in range(classes) if c not in present]
    if absent:
        raise DataError(
            f"{where}: y_train never has label(s) {absent[:5]}: labels must be the integers "
            f"0..K-1 with every class in the training images (K = {classes})"
        )
    if classes < 2:
        raise DataError(f"{where}: y_train has one class; a classifier needs at least two")
    class_names = tuple(str(n) for n in names) if names else tuple(str(c) for c in range(classes))
    if len(class_names) != classes:
        raise DataError(f"{where}: class_names has {len(class_names)} names for {classes} classes")
    final = {
        "x_train": images["train"],
        "y_train": arrays["y_train"],
        "x_test": images["test"],
        "y_test": arrays["y_test"],
    }
    return Dataset(
        name=name,
        arrays=final,
        digest=identity_digest(final),
        class_names=class_names,
        source=source,
        pixel_range=pixel_range,
    )


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _images(x: npt.NDArray[Any], where: str) -> tuple[npt.NDArray[Any], str]:
    """(N, H, W, C) pixels in [0, 255] (uint8 when the data was) and the range found."""
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DataError(
            f"{where} has shape {x.shape}: images must be (N, H, W) or (N, H, W, C) with C = 1 "
            "or 3 (reshape flat rows to (N, H, W))"
        )
    if len(x) == 0:
        raise DataError(f"{where} holds no images")
    if x.dtype == np.uint8:
        return x, "uint8 [0, 255]"
    if x.dtype.kind not in "uif":
        raise DataError(f"{where} has dtype {x.dtype}: pixels must be numbers")
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        raise DataError(f"{where} has NaN or infinite pixels")
    low, high = float(x.min()), float(x.max())
    if x.dtype.kind in "ui":
        if low < 0 or high > 255:
            raise DataError(
                f"{where} has integer pixels from {low:g} to {high:g}: they must be 0..255"
            )
        return x.astype(np.uint8), "integers [0, 255]"
    if low >= 0 and high <= 1:
        return (x * 255.0).astype(np.float32), "floats [0, 1] (scaled to [0, 255])"
    if low >= 0 and high <= 255:
        return x.astype(np.float32), "floats [0, 255]"
    raise DataError(
        f"{where} has float pixels from {low:g} to {high:g}: outside both [0, 1] and [0, 255]"
    )


def _labels(y: npt.NDArray[Any], where: str) -> npt.NDArray[np.int32]:
    """Labels as a flat int32 array of whole numbers 0..K-1."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(
            f"{where} has shape {y.shape}: labels must be one integer per image (0..K-1), "
            "not one-hot rows (use argmax)"
        )
    if y.dtype.kind not in "uif" or y.dtype == np.bool_:
        raise DataError(f"{where} has dtype {y.dtype}: labels must be the integers 0..K-1")
    if y.dtype.kind == "f" and not (np.all(np.isfinite(y)) and np.all(y == np.round(y))):
        raise DataError(f"{where} has labels that are not whole numbers: they must be 0..K-1")
    if len(y) and y.min() < 0:
        raise DataError(f"{where} has negative labels: they must be the integers 0..K-1")
    return y.astype(np.int32)


# --- folders of image files ---------------------------------------------------------------


@dataclass(frozen=True)
class _Image:
    path: Path
    label: int


def folder_dataset(
    folder: Path,
    name: str,
    image_size: tuple[int, int] | None,
    report: Callable[[str], None] = lambda _: None,
) -> Dataset:
    """Decode (or read from the cache) a folder of class folders; see the module doc."""
    splits = _listing(folder)
    key = _folder_key(splits, image_size)
    cached = default_data_dir() / FOLDER_CACHE / f"{key}.npz"
    if cached.is_file():
        try:
            return replace(
                _from_cache(cached, name, folder), origin=_folder_origin(folder, name, image_size)
            )
        except (OSError, ValueError, KeyError):
            report(f"the cached decoding of {folder} ({cached}) is unreadable: decoding again")
    classes = sorted(splits["train"])
    arrays: dict[str, npt.NDArray[Any]] = {}
    for split in ("train", "test"):
        files = [
            _Image(path, classes.index(label)) for label in classes for path in splits[split][label]
        ]
        # files are listed class by class: in a fixed shuffled order instead, so that any
        # validation split (the last images, as for MNIST) holds every class
        order = np.random.default_rng(FOLDER_ORDER_SEED).permutation(len(files))
        files = [files[i] for i in order]
        arrays[f"x_{split}"], arrays[f"y_{split}"] = _decode(files, image_size, folder)
    channels = {arrays["x_train"].shape[-1], arrays["x_test"].shape[-1]}
    if len(channels) > 1 and image_size is not None:  # grey in one split, colour in the other
        arrays["x_train"], arrays["x_test"] = _rgb(arrays["x_train"]), _rgb(arrays["x_test"])
    sizes = {arrays["x_train"].shape[1:], arrays["x_test"].shape[1:]}
    if len(sizes) > 1:
        found = " and ".join(_shape(s) for s in sorted(sizes))
        raise DataError(
            f"{folder}: train and test images differ in size or channels ({found}); give "
            "dataset.image_size: [height, width] to make them one"
        )
    dataset = replace(
        checked_dataset(
            arrays, name=name, source=f"folder {folder}", where=str(folder), names=classes
        ),
        origin=_folder_origin(folder, name, image_size),
    )
    _save(cached, dataset)
    report(
        f"decoded {folder} once ({len(arrays['y_train'])} + {len(arrays['y_test'])} images); "
        f"cached in {cached}"
    )
    return dataset


def _folder_origin(folder: Path, name: str, image_size: tuple[int, int] | None) -> str:
    return json.dumps({"folder": str(folder), "name": name, "image_size": image_size})


def _listing(folder: Path) -> dict[str, dict[str, list[Path]]]:
    """Image files by split and class, with the layout's problems refused."""
    if not folder.is_dir():
        raise DataError(f"dataset.folder: {folder}: no such folder")
    found: dict[str, dict[str, list[Path]]] = {}
    for split in ("train", "test"):
        root = folder / split
        if not root.is_dir():
            raise DataError(
                f"{folder}: no {split}/ folder; the layout is {split}/<class>/<image files>"
            )
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not _hidden(p))
        if not classes:
            raise DataError(
                f"{root}: no class folders; put each class's images in {split}/<class>/"
            )
        found[split] = {}
        for label in classes:
            files = sorted(
                p
                for p in (root / label).rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not _hidden(p)
            )
            if not files:
                raise DataError(
                    f"{root / label}: an empty class folder (no .png or .jpg files); remove it "
                    "or add its images"
                )
            found[split][label] = files
    train, test = set(found["train"]), set(found["test"])
    if train != test:
        only_train, only_test = sorted(train - test), sorted(test - train)
        raise DataError(
            f"{folder}: train/ and test/ have different classes"
            + (f"; only in train/: {only_train}" if only_train else "")
            + (f"; only in test/: {only_test}" if only_test else "")
        )
    return found


def _hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _folder_key(splits: dict[str, dict[str, list[Path]]], size: tuple[int, int] | None) -> str:
    """Digest of every file's place and bytes, and the resize: what the decoding depends on."""
    digest = hashlib.sha256(json.dumps([size, "shuffled", FOLDER_ORDER_SEED]).encode())
    for split, classes in splits.items():
        for label, files in classes.items():
            for path in files:
                digest.update(f"{split}/{label}/{path.name}\0".encode())
                digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _decode(
    files: list[_Image], size: tuple[int, int] | None, folder: Path
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int32]]:
    from PIL import Image, UnidentifiedImageError

    decoded: list[npt.NDArray[np.uint8]] = []
    kinds: dict[str, Path] = {}
    shapes: dict[tuple[int, int], Path] = {}
    for item in files:
        try:
            with Image.open(item.path) as image:
                image.load()
                mode = image.mode
                kind = _kind(mode)
                kinds.setdefault(kind, item.path)
                shapes.setdefault((image.height, image.width), item.path)
                if size is not None:
                    image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
                decoded.append(_pixels(image, kind))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise DataError(
                f"{item.path}: cannot be decoded as an image ({type(error).__name__}); "
                "remove or replace it"
            ) from None
    if size is None and len(shapes) > 1:
        (a, first), (b, second) = list(shapes.items())[:2]
        raise DataError(
            f"{folder}: images differ in size ({first.name} is {_shape(a)}, {second.name} is "
            f"{_shape(b)}); give dataset.image_size: [height, width] to resize them"
        )
    if size is None and len(kinds) > 1:
        (kind_a, first), (kind_b, second) = list(kinds.items())[:2]
        raise DataError(
            f"{folder}: images differ in channels ({first.name} is {kind_a}, {second.name} is "
            f"{kind_b}); "
            "give dataset.image_size: [height, width] to convert them to one kind"
        )
    grey = set(kinds) == {"grey"}  # else every image becomes RGB
    pixels = [p if grey else _rgb(p) for p in decoded]
    return np.stack(pixels), np.asarray([f.label for f in files], dtype=np.int32)


def _kind(mode: str) -> str:
    if mode in GREY_MODES:
        return "grey"
    if mode in ALPHA_MODES:
        return "RGBA"
    return "RGB"


def _pixels(image: Any, kind: str) -> npt.NDArray[np.uint8]:
    if kind == "grey":
        array = np.asarray(image.convert("L"), dtype=np.uint8)
        return array[..., np.newaxis]
    return np.asarray(image.convert("RGB"), dtype=np.uint8)  # alpha dropped


def _rgb(pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    return np.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels


def _save(path: Path, dataset: Dataset) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as tmp:
            np.savez(tmp, class_names=np.asarray(dataset.class_names), **dataset.arrays)  # type: ignore[arg-type]
        os.replace(tmp.name, path)
    except OSError:
        pass  # a read-only cache: decode again next time


def _from_cache(path: Path, name: str, folder: Path) -> Dataset:
    with np.load(path, allow_pickle=False) as npz:
        arrays = {n: np.asarray(npz[n]) for n in ARRAY_NAMES}
        names = tuple(str(n) for n in npz["class_names"].tolist())
    return Dataset(
        name=name,
        arrays=arrays,
        digest=identity_digest(arrays),
        class_names=names,
        source=f"folder {folder} (decoded, cached)",
        pixel_range="uint8 [0, 255]",
    )


__all__ = ["FolderData", "NpzData", "UserData", "load_dataset", "load_origin"]
