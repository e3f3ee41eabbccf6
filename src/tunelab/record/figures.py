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
    """Loss and accuracy per epoch for training and validation, side by side."""
    figure = Figure(figsize=(10, 4), layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
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
    """A grid of the first `limit` misclassified images, each captioned true -> predicted."""
    wrong = np.flatnonzero(labels != predictions)[:limit]
    rows = max(1, int(np.ceil(len(wrong) / columns)))
    figure = Figure(figsize=(columns * 0.9, rows * 1.05 + 0.6), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False)
    for axes in grid.flat:
        axes.axis("off")
    for axes, index in zip(grid.flat, wrong, strict=False):
        image = np.asarray(images[index])
        if image.ndim == 3 and image.shape[-1] == 1:
            axes.imshow(image[..., 0], cmap="gray_r")  # grey: dark ink on white
        else:
            axes.imshow(np.clip(image, 0, 255).astype(np.uint8))  # colour as it is
        axes.set_title(
            f"{class_names[int(labels[index])]}→{class_names[int(predictions[index])]}",
            fontsize=7,
        )
    total = int(np.sum(labels != predictions))
    figure.suptitle(f"{title}: {len(wrong)} of {total} misclassified (true→predicted)")
    return figure
