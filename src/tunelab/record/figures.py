"""Pictures of one training: learning curves and a confusion matrix, as matplotlib Figures.

Figures are built with `matplotlib.figure.Figure` directly, never pyplot, so no global backend or
figure registry is touched (importing this module has no side effects).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from matplotlib.figure import Figure


def learning_curves(
    history: dict[str, list[float]],
    *,
    title: str,
    reference_accuracy: float | None = None,
    reference_label: str = "baseline",
) -> Figure:
    """Loss and accuracy per epoch for training and validation, side by side.

    Drawn for every trial, so laid out by fixed margins: matplotlib's constrained layout
    measured a third of the figure's cost."""
    figure = Figure(figsize=(10, 4))
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    figure.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.88, wspace=0.22)
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    for axes, key in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        for prefix, style in (("", "-o"), ("val_", "-s")):
            values = history.get(prefix + key)
            if values:
                axes.plot(
                    epochs[: len(values)], values, style, ms=3, label=(prefix or "train_") + key
                )
        axes.set_xlabel("epoch")
        axes.set_ylabel(key)
        axes.grid(alpha=0.3)
    if reference_accuracy is not None:
        accuracy_axes.axhline(reference_accuracy, color="grey", ls="--", label=reference_label)
    loss_axes.legend()
    accuracy_axes.legend(loc="lower right")
    figure.suptitle(title)
    return figure


def confusion_counts(
    labels: npt.NDArray[np.integer], predictions: npt.NDArray[np.integer], num_classes: int
) -> npt.NDArray[np.int64]:
    """Matrix whose [true, predicted] cell counts the images."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels.astype(np.int64), predictions.astype(np.int64)), 1)
    return matrix


def confusion_matrix(
    matrix: npt.NDArray[np.int64], class_names: Sequence[str], *, title: str
) -> Figure:
    """The confusion matrix as a heat map with the count in every cell."""
    size = max(5.0, 0.55 * len(class_names) + 2)
    figure = Figure(figsize=(size, size), layout="constrained")
    axes = figure.subplots()
    # log colour scale, so the few errors stay visible next to the large diagonal
    image = axes.imshow(np.log1p(matrix), cmap="Blues")
    ticks = np.arange(len(class_names))
    axes.set_xticks(ticks, labels=list(class_names), rotation=45, ha="right")
    axes.set_yticks(ticks, labels=list(class_names))
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    threshold = np.log1p(matrix).max() / 2
    for (row, col), count in np.ndenumerate(matrix):
        color = "white" if np.log1p(count) > threshold else "black"
        axes.text(col, row, str(count), ha="center", va="center", fontsize=7, color=color)
    accuracy = np.trace(matrix) / max(1, matrix.sum())
    axes.set_title(f"{title}\naccuracy {accuracy:.4f} on {matrix.sum()} images")
    figure.colorbar(image, ax=axes, shrink=0.7, label="log(1 + count)")
    return figure


def misclassified_examples(
    images: npt.NDArray[np.generic],
    labels: npt.NDArray[np.integer],
    predictions: npt.NDArray[np.integer],
    class_names: Sequence[str],
    *,
    title: str,
    limit: int = 48,
    columns: int = 12,
) -> Figure:
    """A grid of the first `limit` misclassified images, each captioned true -> predicted.

    The grid is one mosaic in one axes (a band for the caption above each image), not one axes
    per image: laying out and drawing 48 axes took over a second per export."""
    wrong = np.flatnonzero(labels != predictions)[:limit]
    rows = max(1, int(np.ceil(len(wrong) / columns)))
    mosaic, origins, width = _mosaic(images, wrong, rows, columns)
    grid_width = columns * 0.9  # inches; the height follows the images' shape
    grid_height = grid_width * mosaic.shape[0] / mosaic.shape[1]
    figure = Figure(figsize=(grid_width, grid_height + 0.6))
    axes = figure.add_axes((0.0, 0.0, 1.0, grid_height / (grid_height + 0.6)))
    axes.axis("off")
    if mosaic.ndim == 2:
        axes.imshow(mosaic, cmap="gray_r", interpolation="nearest")  # grey: dark ink on white
    else:
        axes.imshow(mosaic, interpolation="nearest")  # colour as it is
    for (top, left), index in zip(origins, wrong, strict=True):
        axes.text(
            left + width / 2,
            top - 1,
            f"{class_names[int(labels[index])]}→{class_names[int(predictions[index])]}",
            fontsize=7,
            ha="center",
            va="bottom",
        )
    total = int(np.sum(labels != predictions))
    figure.suptitle(f"{title}: {len(wrong)} of {total} misclassified (true→predicted)")
    return figure


def _mosaic(
    images: npt.NDArray[np.generic], chosen: npt.NDArray[np.intp], rows: int, columns: int
) -> tuple[npt.NDArray[np.generic], list[tuple[int, int]], int]:
    """The chosen images tiled row by row on a blank background, a caption band above each and
    a margin beside it; the mosaic, each image's (top, left) in it and the images' width."""
    sample = np.asarray(images[:1])
    height, width = sample.shape[1], sample.shape[2]
    grey = sample.ndim == 3 or sample.shape[-1] == 1
    band, margin = max(4, height // 3), max(2, width // 8)
    cell_height, cell_width = height + band, width + margin
    shape = (rows * cell_height, columns * cell_width) + (() if grey else (sample.shape[-1],))
    tiles: npt.NDArray[np.generic]
    if grey:  # gray_r: the smallest value is white
        tiles = np.asarray(images[chosen]).reshape(len(chosen), height, width).astype(np.float32)
        blank = float(tiles.min()) if len(chosen) else 0.0
    else:
        tiles = _colour_bytes(np.asarray(images[chosen]))
        blank = 255.0
    mosaic = np.full(shape, blank, dtype=tiles.dtype)
    origins = [
        (row * cell_height + band, column * cell_width + margin // 2)
        for row, column in (divmod(slot, columns) for slot in range(len(tiles)))
    ]
    for (top, left), tile in zip(origins, tiles, strict=True):
        mosaic[top : top + height, left : left + width] = tile
    return mosaic, origins, width


def _colour_bytes(tiles: npt.NDArray[np.generic]) -> npt.NDArray[np.uint8]:
    """Colour images as 0-255 bytes, whatever their scale: integers as they are (clipped), floats
    in [0, 1] scaled up, floats in [0, 255] as they are, anything else (standardised images)
    stretched from its minimum to its maximum."""
    values: npt.NDArray[np.float32] = tiles.astype(np.float32)
    if values.size and not np.issubdtype(tiles.dtype, np.integer):
        low, high = float(values.min()), float(values.max())
        if low >= 0.0 and high <= 1.0:
            values = values * 255.0
        elif low < 0.0 or high > 255.0:
            values = (values - low) * (255.0 / max(high - low, 1e-12))
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)
