"""tf.data pipelines for the paper's experiments, plus offline data for CPU machines.

``load(name)`` returns a :class:`Data`: batched, shuffled (train), normalised, prefetched
train and test datasets with what a model needs to know (shape, classes).

* ``cifar10``, ``cifar100``: TFDS; per-channel standardisation; the standard augmentation
  (4-pixel reflect padding, random 32×32 crop, horizontal flip) on the training split.
* ``tiny_imagenet``: the TFDS builder of this package (:mod:`keras_pacgen.tiny_imagenet`);
  the labelled validation split is the test set, as in the paper; 64×64 crops after 4-pixel
  padding and flips.
* ``mnist``: TFDS (the paper's Figs. 4-5), scaled to [0, 1].
* ``mnist1d``: MNIST-1D (Greydanus 2020) generated locally from its templates, never downloaded:
  4000 train / 1000 test, 40 features, 10 classes.
* ``digits``: scikit-learn's 8×8 handwritten digits (shipped inside scikit-learn), 1437 train /
  360 test.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import tensorflow as tf

from keras_pacgen import _validation as check

OFFLINE = ("mnist1d", "digits")
TFDS = ("cifar10", "cifar100", "tiny_imagenet", "mnist")
NAMES = OFFLINE + TFDS

_CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tiny_imagenet": ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)),
}


class DatasetUnavailableError(RuntimeError):
    """The dataset cannot be had here (no network, no prepared or manual files)."""


@dataclasses.dataclass
class Data:
    """A dataset ready for ``model.fit(data.train, validation_data=data.test)``."""

    name: str
    train: tf.data.Dataset
    test: tf.data.Dataset
    input_shape: tuple[int, ...]
    num_classes: int
    num_train: int
    num_test: int
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = dataclasses.field(
        default=None, repr=False
    )


@functools.lru_cache(maxsize=4)
def mnist1d_arrays(seed: int = 42) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST-1D generated locally (the package's own generator, no download)."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    d = make_dataset(args)
    return (
        d["x"].astype("float32"),
        d["y"].astype("int32"),
        d["x_test"].astype("float32"),
        d["y_test"].astype("int32"),
    )


@functools.lru_cache(maxsize=1)
def digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits, 8×8×1 in [0, 1], a fixed stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target.astype("int32")
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return x_tr, y_tr, x_te, y_te


def split(arrays, *, validation_split: float = 0.0, train_size: int | None = None):
    """((x, y) train, (x, y) validation, (x, y) test) from `Data.arrays`: the validation set is
    carved from the training split (a fixed permutation, the same for every run), then the
    training set cut to its first `train_size` samples. The test set is never touched."""
    check.check_float("validation_split", validation_split, low=0.0, high=1.0, high_inclusive=False)
    check.check_int("train_size", train_size, low=1, allow_none=True)
    x, y, x_test, y_test = arrays
    order = np.random.default_rng(0).permutation(len(x))
    n_val = int(round(validation_split * len(x)))
    val, train = order[:n_val], order[n_val:]
    if train_size is not None:
        if train_size > len(train):
            raise ValueError(f"`train_size` must be at most {len(train)} (the training samples "
                             f"left after the validation split). Received: train_size={train_size}")
        train = train[:train_size]
    return (x[train], y[train]), (x[val], y[val]), (x_test, y_test)


def _from_arrays(x, y, batch_size, shuffle, seed, drop_remainder=False):
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def augment_image(image, seed_pair, pad: int = 4):
    """Reflect-pad by `pad` pixels, random crop back to size, random horizontal flip (stateless)."""
    h, w, c = image.shape
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    image = tf.image.stateless_random_crop(padded, (h, w, c), seed=seed_pair)
    return tf.image.stateless_random_flip_left_right(image, seed=seed_pair + 1)


_HOSTS = {
    "cifar10": "www.cs.toronto.edu",
    "cifar100": "www.cs.toronto.edu",
    "mnist": "storage.googleapis.com",
    "tiny_imagenet": "cs231n.stanford.edu",
}


def _reachable(host: str, timeout: float = 3.0) -> bool:
    import socket

    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _tfds_load(name, split, data_dir, download):
    import tensorflow_datasets as tfds

    if name == "tiny_imagenet":
        from keras_pacgen import tiny_imagenet  # noqa: F401  (registers the builder)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        prepared = builder.is_prepared()
        manual = tfds.core.Path(builder.data_dir).parent.parent / "downloads" / "manual"
        has_manual = name == "tiny_imagenet" and any(
            (manual / f).exists() for f in ("tiny-imagenet-200", "tiny-imagenet-200.zip")
        )
        if not prepared and download and not has_manual and not _reachable(_HOSTS[name]):
            # Fail in seconds: TFDS would retry an unreachable host for minutes.
            raise ConnectionError(f"cannot reach {_HOSTS[name]} to download {name!r}")
        return tfds.load(
            name, split=split, as_supervised=True, data_dir=data_dir, download=download,
            with_info=True,
        )
    except Exception as err:  # network errors, missing files, missing manual downloads
        raise DatasetUnavailableError(_unavailable_message(name, data_dir, err)) from err


def _unavailable_message(name, data_dir, err):
    where = data_dir or "~/tensorflow_datasets"
    how = {
        "tiny_imagenet": (
            "Download tiny-imagenet-200.zip (http://cs231n.stanford.edu/tiny-imagenet-200.zip) on a "
            f"machine with network access and put it (or its extracted folder) in "
            f"{where}/downloads/manual/, then run again; or copy a prepared {where}/tiny_imagenet "
            "folder from another machine."
        ),
    }.get(
        name,
        f"Run once with network access (TFDS downloads and prepares it into {where}), or copy a "
        f"prepared {where}/{name} folder from another machine and pass data_dir=.",
    )
    return (
        f"Dataset {name!r} is not available here: {type(err).__name__}: {str(err)[:300]}\n{how}\n"
        f"Offline datasets that always work: {', '.join(OFFLINE)}."
    )


def _num_examples(info, split, ds) -> int:
    try:
        return int(info.splits[split].num_examples)
    except KeyError:  # mock data: no split metadata
        return int(ds.cardinality())


def load(
    name: str = "mnist1d",
    *,
    batch_size: int = 128,
    augment: bool | None = None,
    shuffle: bool = True,
    seed: int = 0,
    data_dir: str | None = None,
    download: bool = True,
) -> Data:
    """Train and test pipelines for `name` (one of `NAMES`).

    Args:
        name: ``"mnist1d"``, ``"digits"`` (offline), ``"cifar10"``, ``"cifar100"``,
            ``"tiny_imagenet"``, ``"mnist"`` (TFDS).
        batch_size: batch size of both splits.
        augment: the standard crop-and-flip augmentation on the training split; default on for
            the image datasets of the paper (CIFAR, Tiny ImageNet), off otherwise.
        shuffle: reshuffle the training split every epoch (seeded).
        seed: seed of shuffling and augmentation.
        data_dir: TFDS data directory.
        download: let TFDS download when the data is not prepared.

    Raises:
        DatasetUnavailableError: a TFDS dataset that cannot be downloaded or found, with what to do.
    """
    check.check_choice("name", name, NAMES)
    batch_size = check.check_int("batch_size", batch_size, low=1)
    seed = check.check_int("seed", seed, low=0)
    if name in OFFLINE:
        if augment:
            raise ValueError(f"`augment` is only available for image datasets, not {name!r}.")
        x_tr, y_tr, x_te, y_te = mnist1d_arrays() if name == "mnist1d" else digits_arrays()
        if name == "mnist1d":
            mean, std = x_tr.mean(), x_tr.std()
            x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
        return Data(
            name=name,
            train=_from_arrays(x_tr, y_tr, batch_size, shuffle, seed),
            test=_from_arrays(x_te, y_te, batch_size, False, seed),
            input_shape=tuple(x_tr.shape[1:]),
            num_classes=10,
            num_train=len(x_tr),
            num_test=len(x_te),
            arrays=(x_tr, y_tr, x_te, y_te),
        )
    augment = name != "mnist" if augment is None else augment
    test_split = "validation" if name == "tiny_imagenet" else "test"
    (train, test), info = _tfds_load(name, ["train", test_split], data_dir, download)
    num_train, num_test = (_num_examples(info, split, ds) for split, ds in (("train", train), (test_split, test)))
    num_classes = info.features["label"].num_classes
    shape = tuple(info.features["image"].shape)
    if name == "mnist":
        def normalise(x):
            return tf.cast(x, tf.float32) / 255.0
    else:
        mean, std = (tf.constant(s, tf.float32) for s in _CIFAR_STATS[name])

        def normalise(x):
            return (tf.cast(x, tf.float32) / 255.0 - mean) / std

    def prepare_train(example, seed_pair):
        image, label = example
        image = normalise(image)
        if augment:
            image = augment_image(image, seed_pair)
        return image, label

    if shuffle:
        train = train.shuffle(10_000, seed=seed, reshuffle_each_iteration=True)
    # A new stream of augmentation seeds every epoch, reproducible from `seed`.
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    train = tf.data.Dataset.zip((train, seeds))
    train = train.map(prepare_train, num_parallel_calls=tf.data.AUTOTUNE)
    train = train.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    test = test.map(lambda x, y: (normalise(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    test = test.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    return Data(
        name=name,
        train=train,
        test=test,
        input_shape=shape,
        num_classes=num_classes,
        num_train=num_train,
        num_test=num_test,
    )
