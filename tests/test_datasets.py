"""Data pipelines: offline data for real, TFDS through mock data and a dummy archive."""

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_pacgen import datasets
from keras_pacgen.tiny_imagenet import TinyImagenet


def test_mnist1d_is_generated_offline_and_standardised():
    data = datasets.load("mnist1d", batch_size=100)
    assert (data.num_train, data.num_test, data.input_shape, data.num_classes) == (4000, 1000, (40,), 10)
    x, y = next(iter(data.train))
    assert x.shape == (100, 40) and y.dtype == tf.int32
    x_tr = data.arrays[0]
    assert abs(float(x_tr.mean())) < 1e-4 and abs(float(x_tr.std()) - 1) < 1e-3
    assert set(np.unique(data.arrays[1])) == set(range(10))


def test_digits_offline():
    data = datasets.load("digits", batch_size=32)
    assert (data.num_train, data.num_test, data.input_shape) == (1437, 360, (8, 8, 1))
    x, _ = next(iter(data.test))
    assert 0.0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 1.0


def test_training_split_is_reshuffled_each_epoch_reproducibly():
    a = [y.numpy() for _, y in datasets.load("digits", batch_size=64, seed=3).train]
    first = np.concatenate(a)
    data = datasets.load("digits", batch_size=64, seed=3)
    epoch1 = np.concatenate([y.numpy() for _, y in data.train])
    epoch2 = np.concatenate([y.numpy() for _, y in data.train])
    np.testing.assert_array_equal(first, epoch1)
    assert not np.array_equal(epoch1, epoch2)


@pytest.mark.parametrize("name, classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_pipeline_on_mock_data(name, classes):
    with tfds.testing.mock_data(num_examples=20):
        data = datasets.load(name, batch_size=8, seed=1, download=False)
        x, y = next(iter(data.train))
        xt, _ = next(iter(data.test))
    assert x.shape == (8, 32, 32, 3) and x.dtype == tf.float32 and xt.shape == (8, 32, 32, 3)
    assert data.num_classes == classes and data.input_shape == (32, 32, 3)
    assert int(tf.reduce_max(y)) < classes


def test_augmentation_pads_crops_and_flips():
    image = tf.reshape(tf.range(32 * 32 * 3, dtype=tf.float32), (32, 32, 3))
    outs = [datasets.augment_image(image, tf.constant([0, s], tf.int64)).numpy() for s in range(8)]
    assert all(o.shape == (32, 32, 3) for o in outs)
    assert len({o.tobytes() for o in outs}) > 1  # different crops / flips for different seeds
    with tfds.testing.mock_data(num_examples=8):
        plain = datasets.load("cifar10", batch_size=8, augment=False, shuffle=False, download=False)
        aug = datasets.load("cifar10", batch_size=8, augment=True, shuffle=False, download=False)
        a, b = next(iter(plain.train))[0], next(iter(aug.train))[0]
    assert not np.array_equal(a.numpy(), b.numpy())
    with pytest.raises(ValueError, match="augment"):
        datasets.load("mnist1d", augment=True)


def test_unavailable_dataset_says_what_to_do(tmp_path):
    with pytest.raises(datasets.DatasetUnavailableError) as err:
        datasets.load("cifar10", data_dir=str(tmp_path), download=False)
    message = str(err.value)
    assert "cifar10" in message and "mnist1d" in message and "network" in message
    with pytest.raises(datasets.DatasetUnavailableError, match="tiny-imagenet-200.zip"):
        datasets.load("tiny_imagenet", data_dir=str(tmp_path), download=False)


def test_bad_arguments():
    with pytest.raises(ValueError, match="`name` must be one of"):
        datasets.load("imagenet")
    with pytest.raises(ValueError, match="`batch_size`"):
        datasets.load("digits", batch_size=0)


class TinyImagenetTest(tfds.testing.DatasetBuilderTestCase):
    """The builder on a dummy archive laid out like tiny-imagenet-200 (3 classes, 1 grey image each)."""

    DATASET_CLASS = TinyImagenet
    EXAMPLE_DIR = str(Path(__file__).parent / "data" / "tiny_imagenet")
    SPLITS = {"train": 6, "validation": 4}
    SKIP_CHECKSUMS = True


def test_tiny_imagenet_images_are_rgb_and_labels_sorted(tmp_path):
    import shutil

    manual = tmp_path / "manual"
    shutil.copytree(Path(__file__).parent / "data" / "tiny_imagenet", manual)
    builder = TinyImagenet(data_dir=str(tmp_path / "data"))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual))
    )
    val = list(tfds.as_numpy(builder.as_dataset(split="validation")))
    assert all(ex["image"].shape == (64, 64, 3) for ex in val)
    wnids = sorted((manual / "tiny-imagenet-200" / "wnids.txt").read_text().split())
    assert all(wnids[ex["label"]] == ex["wnid"].decode() for ex in val)
    train = list(tfds.as_numpy(builder.as_dataset(split="train")))
    assert len(train) == 6 and builder.info.features["label"].num_classes == 200
