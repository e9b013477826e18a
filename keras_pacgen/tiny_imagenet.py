"""A TFDS builder for Tiny ImageNet (tiny-imagenet-200), which the TFDS catalog lacks.

200 classes of 64×64 RGB images: 100,000 labelled training images (500 per class) and 10,000
labelled validation images, the paper's test set. The unlabelled ``test/`` images are not used.
Greyscale images are converted to RGB. Labels index the sorted WordNet ids of ``wnids.txt``.

Data comes from the official archive, downloaded, or from a manual directory
(``<data_dir>/downloads/manual/``) holding ``tiny-imagenet-200.zip`` or its extracted
``tiny-imagenet-200/`` folder::

    import keras_pacgen.tiny_imagenet  # registers the builder
    tfds.load("tiny_imagenet", split="validation")
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
FOLDER = "tiny-imagenet-200"
NUM_CLASSES = 200


def _rgb(path) -> np.ndarray:
    from PIL import Image

    with path.open("rb") as f, Image.open(f) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


class TinyImagenet(tfds.core.GeneratorBasedBuilder):
    """Tiny ImageNet: 200 classes, 64×64 RGB, 100k train / 10k labelled validation images."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Train and labelled validation splits; greyscale converted to RGB."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Download {URL} and place the zip file, or the extracted `{FOLDER}/` folder, in "
        "`manual_dir/` (by default ~/tensorflow_datasets/downloads/manual/)."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(64, 64, 3)),
                    "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
                    "wnid": tfds.features.Text(),
                    "id": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="http://cs231n.stanford.edu/",
        )

    def _root(self, dl_manager) -> tfds.core.Path:
        manual = getattr(dl_manager, "_manual_dir", None)
        if manual is not None and tfds.core.Path(manual).exists():
            manual = tfds.core.Path(manual)
            if (manual / FOLDER).exists():
                return manual / FOLDER
            if (manual / f"{FOLDER}.zip").exists():
                return dl_manager.extract(manual / f"{FOLDER}.zip") / FOLDER
        return tfds.core.Path(dl_manager.download_and_extract(URL)) / FOLDER

    def _split_generators(self, dl_manager):
        root = self._root(dl_manager)
        wnids = sorted(w.strip() for w in (root / "wnids.txt").read_text().split() if w.strip())
        if len(wnids) > NUM_CLASSES:
            raise ValueError(f"{root / 'wnids.txt'} lists {len(wnids)} classes, expected {NUM_CLASSES}.")
        return {
            "train": self._generate_examples(root, wnids, "train"),
            "validation": self._generate_examples(root, wnids, "validation"),
        }

    def _generate_examples(self, root, wnids, split):
        if split == "train":
            yield from self._train_examples(root, wnids)
        else:
            yield from self._validation_examples(root, wnids)

    def _train_examples(self, root, wnids):
        for label, wnid in enumerate(wnids):
            images = root / "train" / wnid / "images"
            for path in sorted(images.iterdir()):
                if path.suffix.upper() != ".JPEG":
                    continue
                yield path.name, {"image": _rgb(path), "label": label, "wnid": wnid, "id": path.stem}

    def _validation_examples(self, root, wnids):
        index = {w: i for i, w in enumerate(wnids)}
        for line in (root / "val" / "val_annotations.txt").read_text().splitlines():
            parts = line.split("\t")
            if len(parts) < 2:
                continue
            name, wnid = parts[0], parts[1]
            path = root / "val" / "images" / name
            yield name, {"image": _rgb(path), "label": index[wnid], "wnid": wnid, "id": path.stem}
