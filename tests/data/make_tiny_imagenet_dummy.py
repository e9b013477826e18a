"""Writes a tiny dummy tiny-imagenet-200 tree (3 classes) laid out like the real archive."""

import sys
from pathlib import Path

import numpy as np
from PIL import Image

WNIDS = ["n01443537", "n01629819", "n01641577"]


def write(root: Path) -> None:
    rng = np.random.default_rng(0)
    base = root / "tiny-imagenet-200"
    (base / "val" / "images").mkdir(parents=True, exist_ok=True)
    (base / "test" / "images").mkdir(parents=True, exist_ok=True)
    (base / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (base / "words.txt").write_text(
        "\n".join(f"{w}\tclass {i}" for i, w in enumerate(WNIDS)) + "\nn00000000\tunused\n"
    )

    def image(path, grey=False):
        if grey:
            Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8), "L").save(path, "JPEG")
        else:
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, "JPEG")

    for c, wnid in enumerate(WNIDS):
        images = base / "train" / wnid / "images"
        images.mkdir(parents=True, exist_ok=True)
        boxes = []
        for i in range(2):
            name = f"{wnid}_{i}.JPEG"
            image(images / name, grey=(c == 0 and i == 0))
            boxes.append(f"{name}\t0\t0\t63\t63")
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("\n".join(boxes) + "\n")
    lines = []
    for i in range(4):
        name = f"val_{i}.JPEG"
        image(base / "val" / "images" / name, grey=(i == 1))
        lines.append(f"{name}\t{WNIDS[i % 3]}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    image(base / "test" / "images" / "test_0.JPEG")


if __name__ == "__main__":
    write(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "tiny_imagenet"))
