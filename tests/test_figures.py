"""The pictures a run records show the images as a person would see them, whatever their scale."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import numpy.typing as npt
import pytest
from matplotlib.image import imread

from tunelab.record.figures import misclassified_examples


def rendered(images: npt.NDArray[np.generic]) -> npt.NDArray[np.uint8]:
    """The misclassified grid of `images` (every one wrong) as RGB pixels."""
    labels = np.zeros(len(images), dtype=np.int64)
    figure = misclassified_examples(
        images, labels, labels + 1, ["zero", "one"], title="test", columns=4
    )
    png = BytesIO()
    figure.savefig(png, format="png")
    png.seek(0)
    return np.asarray(imread(png)[..., :3] * 255, dtype=np.uint8)


def red_left_green_right(scale: float, offset: float = 0.0) -> npt.NDArray[np.float64]:
    """Four 16x16 colour images, red on the left half and green on the right, times `scale`."""
    images = np.zeros((4, 16, 16, 3))
    images[:, :, :8, 0] = 1.0
    images[:, :, 8:, 1] = 1.0
    return images * scale + offset


@pytest.mark.parametrize(
    "images",
    [
        red_left_green_right(255.0).astype(np.uint8),
        red_left_green_right(1.0).astype(np.float32),  # a user's npz scaled to [0, 1]
        red_left_green_right(255.0),  # floats on the byte scale
        red_left_green_right(2.0, offset=-1.0),  # standardised: [-1, 1]
    ],
    ids=["uint8", "float 0-1", "float 0-255", "float -1-1"],
)
def test_colour_images_keep_their_colours_in_the_misclassified_grid(
    images: npt.NDArray[np.generic],
) -> None:
    pixels = rendered(images).astype(int)
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    assert np.sum((red > 200) & (green < 60) & (blue < 60)) > 100  # the red halves are red
    assert np.sum((green > 200) & (red < 60) & (blue < 60)) > 100  # the green halves are green
