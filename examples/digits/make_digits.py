"""Write scikit-learn's handwritten digits (1,797 8x8 images, shipped inside the package, so no
network is needed) as an image folder: data/train/<digit>/*.png and data/test/<digit>/*.png.

The layout is `tfds.ImageFolder`'s, the one tunelab reads with `dataset: {folder: data}`. The 17
grey levels (0..16) become 0..255; a seeded fifth of each digit's images is the test set.

Usage: python examples/digits/make_digits.py [--out examples/digits/data]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

TEST_SHARE = 0.2


def write_folder(out: Path, seed: int = 0) -> tuple[int, int]:
    """Write the PNG files; returns (training images, test images)."""
    digits = load_digits()
    pixels = np.rint(digits.images * (255 / 16)).astype(np.uint8)
    rng = np.random.default_rng(seed)
    shutil.rmtree(out, ignore_errors=True)
    counts = {"train": 0, "test": 0}
    for label in range(10):
        indices = rng.permutation(np.flatnonzero(digits.target == label))
        held = round(TEST_SHARE * len(indices))
        for split, chosen in (("test", indices[:held]), ("train", indices[held:])):
            folder = out / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for index in chosen:
                Image.fromarray(pixels[index], mode="L").save(folder / f"{index:04d}.png")
            counts[split] += len(chosen)
    return counts["train"], counts["test"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    args = parser.parse_args()
    train, test = write_folder(args.out)
    print(f"wrote {train} training and {test} test images of 8x8 digits under {args.out}")


if __name__ == "__main__":
    main()
