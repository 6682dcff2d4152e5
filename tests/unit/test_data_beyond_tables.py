"""Data beyond tabular class labels: image folders, regression targets, torch datasets,
and the check that a silo's data fits the task's model before anything is trained."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from client.data import Dataset, from_torch, hold_out, load_csv, load_data
from client.datacheck import check_data_fits
from client.images import load_image_folder
from client.trainers.numpy_trainer import NumpyTrainer
from fedasync.core.config import TaskConfig
from fedasync.core.errors import ConfigError, SchemaError


def _png(path, pixels, mode="L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.array(pixels, dtype=np.uint8), mode).save(path)


def test_an_image_folder_is_labelled_by_sorted_class_folders(tmp_path) -> None:
    # GIVEN classes 'dog' and 'cat' (sorted: cat = 0, dog = 1) of 2x2 greyscale PNGs
    _png(tmp_path / "dog" / "1.png", [[255, 0], [0, 255]])
    _png(tmp_path / "cat" / "1.png", [[51, 51], [51, 51]])
    _png(tmp_path / "cat" / "2.PNG", [[0, 0], [0, 102]])
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    # WHEN the folder is loaded (through --data's loader)
    data = load_data(str(tmp_path))
    # THEN 3 images of shape (2, 2, 1), pixels / 255, labels by class folder
    assert data.classes == ("cat", "dog")
    assert data.x.shape == (3, 2, 2, 1)
    assert data.feature_shape == (2, 2, 1)
    assert data.y.tolist() == [0, 0, 1]
    assert data.x[0, :, :, 0].tolist() == [[pytest.approx(0.2)] * 2] * 2
    assert data.x[1, 1, 1, 0] == pytest.approx(0.4)
    assert data.x[2, :, :, 0].tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_colour_images_have_three_channels(tmp_path) -> None:
    # GIVEN one RGB image among greyscale ones
    _png(tmp_path / "a" / "x.png", [[[255, 0, 0]]], "RGB")
    _png(tmp_path / "b" / "y.png", [[255]])
    # THEN every image is read as RGB: red is (1, 0, 0), white grey is (1, 1, 1)
    data = load_image_folder(tmp_path)
    assert data.x.shape == (2, 1, 1, 3)
    assert data.x[0, 0, 0].tolist() == [1.0, 0.0, 0.0]
    assert data.x[1, 0, 0].tolist() == [1.0, 1.0, 1.0]


def test_images_of_two_sizes_or_an_unreadable_file_are_named(tmp_path) -> None:
    # GIVEN a 2x2 and a 3x1 image
    _png(tmp_path / "a" / "small.png", [[0, 0], [0, 0]])
    _png(tmp_path / "b" / "wide.png", [[0, 0, 0]])
    # THEN the error names the odd file and both sizes
    with pytest.raises(SchemaError, match=r"wide\.png' is 3x1.*small\.png' is 2x2"):
        load_image_folder(tmp_path)
    # AND resizing them all to one size loads them
    assert load_image_folder(tmp_path, size=(4, 4)).x.shape == (2, 4, 4, 1)
    # AND a file that is no image is named
    (tmp_path / "b" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(SchemaError, match=r"broken\.png' is not a readable PNG/JPEG"):
        load_image_folder(tmp_path, size=(4, 4))


def test_an_empty_class_folder_is_refused(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SchemaError, match="class 'empty' holds no"):
        load_image_folder(tmp_path)


def test_regression_targets_load_as_floats_and_split_at_random(tmp_path) -> None:
    # GIVEN a CSV whose last column is a real-valued target
    path = tmp_path / "houses.csv"
    path.write_text("".join(f"{i},{i * 0.5}\n" for i in range(10)))
    # WHEN read for regression
    data = load_csv(path, regression=True)
    # THEN the targets are float32 as written, and a fifth is held out (no strata)
    assert data.regression
    assert data.y.dtype == np.float32
    assert data.y[:3].tolist() == [0.0, 0.5, 1.0]
    train, held = hold_out(data, 0.2, seed=0)
    assert held is not None
    assert (len(train), len(held)) == (8, 2)
    assert not set(train.y.tolist()) & set(held.y.tolist())
    # AND read as classes, the fractional targets are refused with the hint
    with pytest.raises(SchemaError, match=r"not whole numbers.*--loss mse"):
        load_csv(path)


def test_numpy_regression_step_matches_the_hand_computation() -> None:
    # GIVEN y_hat = w*x + b from w = 1, b = 0, data x = (1, 2), y = (0, 0), lr 0.1, no L2
    trainer = NumpyTrainer(1, 1, loss="mse", learning_rate=0.1, batch_size=2, l2=0.0)
    start = {"dense/kernel": np.ones((1, 1), np.float32), "dense/bias": np.zeros(1, np.float32)}
    x, y = np.array([[1.0], [2.0]], np.float32), np.zeros(2, np.float32)
    # WHEN one epoch (one batch) is trained
    result = trainer.fit(start, x, y, epochs=1, seed=0)
    # THEN residuals (1, 2): dL/dw = 2 (1*1 + 2*2) / 2 = 5, dL/db = 2 (1 + 2) / 2 = 3;
    # w = 0.5, b = -0.3; then residuals (0.2, 0.7): MSE 0.265, MAE 0.45, no accuracy
    assert result.weights["dense/kernel"][0, 0] == pytest.approx(0.5)
    assert result.weights["dense/bias"][0] == pytest.approx(-0.3)
    assert result.metrics == {
        "train_loss": pytest.approx(0.265, rel=1e-6),
        "train_mae": pytest.approx(0.45, rel=1e-6),
    }


@pytest.mark.torch
def test_a_torch_dataset_or_loader_becomes_arrays() -> None:
    torch = pytest.importorskip("torch")
    # GIVEN three examples with integer labels, as a Dataset and as a DataLoader (batch 2)
    xs = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    ds = torch.utils.data.TensorDataset(xs, torch.tensor([2, 0, 1]))
    for source in (ds, torch.utils.data.DataLoader(ds, batch_size=2)):
        # WHEN converted
        data = from_torch(source)
        # THEN the arrays are the examples in order, labels int64 classes
        assert data.x.tolist() == [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
        assert data.y.tolist() == [2, 0, 1]
        assert data.y.dtype == np.int64
    # AND float targets are regression
    reg = from_torch(torch.utils.data.TensorDataset(xs, torch.tensor([0.5, 1.5, 2.5])))
    assert reg.regression
    assert reg.y.tolist() == [0.5, 1.5, 2.5]


def test_data_of_the_wrong_feature_shape_is_named_before_training() -> None:
    # GIVEN a task whose model takes 64 features and a silo with 30 per example
    task_model = NumpyTrainer(64, 10).init_weights(0)
    data = Dataset(np.zeros((5, 30), np.float32), np.zeros(5, np.int64), "data file 'x.npz'")
    # WHEN the data is checked with the trainer the CLI builds for it
    # THEN the error names the data, its shape, the tensor and both shapes
    with pytest.raises(SchemaError) as err:
        check_data_fits(NumpyTrainer(30, 10), task_model, data, "digits")
    assert err.value.reason == "feature_shape"
    assert err.value.message == (
        "data file 'x.npz' (examples of shape (30,)) does not fit task 'digits': the numpy "
        "trainer's model for it has tensor 'dense/kernel' of shape (30, 10); the task's "
        "model has (64, 10)"
    )
    # AND data of the right shape passes
    right = Dataset(np.zeros((5, 64), np.float32), np.zeros(5, np.int64))
    check_data_fits(NumpyTrainer(64, 10), task_model, right, "digits")


def test_a_task_names_its_loss_and_a_regression_task_has_no_accuracy_target() -> None:
    base = {"task_name": "houses", "mode": "async", "clients": ["a"]}
    # GIVEN a regression task: its loss is recorded
    assert TaskConfig.parse({**base, "loss": "mse"}).loss == "mse"
    assert TaskConfig.parse(base).loss == "cross_entropy"
    # THEN an accuracy target is refused with what to use instead
    with pytest.raises(ConfigError, match=r"regression task.*eval_loss"):
        TaskConfig.parse(
            {**base, "loss": "mse", "target_metric": {"name": "eval_accuracy", "threshold": 0.9}}
        )
    # AND an unknown loss names the field
    with pytest.raises(ConfigError, match="loss: Input should be 'cross_entropy' or 'mse'"):
        TaskConfig.parse({**base, "loss": "hinge"})


def test_the_numpy_trainer_takes_images_flattened(tmp_path) -> None:
    # GIVEN an image folder of two classes of 2x2 images (sorted: bright = 0, dark = 1)
    for i in range(4):
        _png(tmp_path / "bright" / f"{i}.png", [[255, 200 + i], [220, 255]])
        _png(tmp_path / "dark" / f"{i}.png", [[0, 10 + i], [30, 0]])
    data = load_image_folder(tmp_path)
    # WHEN the numpy trainer (4 inputs, 2 classes) trains on the (8, 2, 2, 1) images
    trainer = NumpyTrainer(data.num_features, 2)
    result = trainer.fit(trainer.init_weights(0), data.x, data.y, epochs=20, seed=0)
    # THEN its kernel has one row per pixel and it separates the two classes
    assert data.num_features == 4
    assert result.weights["dense/kernel"].shape == (4, 2)
    assert trainer.evaluate(result.weights, data.x, data.y)["accuracy"] == 1.0
