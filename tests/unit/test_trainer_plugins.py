"""Trainer plugins: `module:factory` paths and `fedasync.trainers` entry points, the
factory told the task's model spec, and a model that is not the task's refused."""

from __future__ import annotations

import numpy as np
import pytest

from client.trainers import (
    PluginTrainer,
    TrainerSetupError,
    get_trainer,
    load_factory,
    parse_options,
)
from client.trainers.numpy_trainer import NumpyTrainer
from fedasync.core.codec import TensorSpec
from tests.integration import byo_plugins

X = np.zeros((4, 64), np.float32)
Y = np.array([0, 1, 2, 3])


@pytest.fixture(autouse=True)
def _fresh_calls():
    byo_plugins.calls.clear()


def test_a_factory_path_is_imported_at_once_and_called_with_the_tasks_spec_on_first_use():
    # GIVEN a plugin named by its path, with options
    trainer = get_trainer("tests.integration.byo_plugins:numpy_factory", num_classes=10, lr=0.5)
    # THEN it is imported but not yet called: the task's model is not known yet
    assert isinstance(trainer, PluginTrainer)
    assert byo_plugins.calls == []
    # WHEN the first global model arrives (dense/kernel (64, 10), dense/bias (10,))
    weights = NumpyTrainer().init_weights(0)
    result = trainer.fit(weights, X, Y, epochs=1, seed=0)
    trainer.evaluate(result.weights, X, Y)
    # THEN the factory was called once, with that model's spec and the options
    spec = (
        TensorSpec("dense/kernel", (64, 10), "float32"),
        TensorSpec("dense/bias", (10,), "float32"),
    )
    assert byo_plugins.calls == [(spec, {"num_classes": 10, "lr": 0.5})]
    assert result.num_examples == 4


def test_for_a_tasks_initial_model_the_factory_is_told_no_spec():
    trainer = get_trainer("tests.integration.byo_plugins:numpy_factory")
    weights = trainer.init_weights(3)
    assert byo_plugins.calls == [(None, {})]
    np.testing.assert_array_equal(
        weights["dense/kernel"], NumpyTrainer().init_weights(3)["dense/kernel"]
    )


def test_a_model_that_is_not_the_tasks_is_refused_naming_the_first_tensor_that_differs():
    trainer = get_trainer("tests.integration.byo_plugins:narrow_factory")
    with pytest.raises(TrainerSetupError) as refused:
        trainer.fit(NumpyTrainer().init_weights(0), X, Y, epochs=1, seed=0)
    assert str(refused.value).startswith(
        "the model of --trainer 'tests.integration.byo_plugins:narrow_factory' has tensor "
        "'dense/kernel' of shape (32, 10); the global model has (64, 10)"
    )
    assert refused.value.reason == "shape"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("hospital.models:cnn", "module 'hospital.models' does not import (ModuleNotFoundError"),
        ("tests.integration.byo_plugins:nothing", "has no 'nothing'"),
        ("tests.integration.byo_plugins:calls", None),  # a list: not callable
        ("tests.integration.byo_plugins:", "expected package.module:factory"),
        ("torch2", "unknown trainer 'torch2'; available: keras, numpy"),
    ],
)
def test_a_trainer_that_cannot_be_loaded_says_what_and_where(name, expected):
    with pytest.raises(TrainerSetupError) as refused:
        load_factory(name)
    message = str(refused.value)
    assert repr(name) in message
    assert (expected or "is not callable") in message


def test_a_factory_that_raises_or_returns_no_trainer_is_a_setup_error():
    def raising(spec, options):
        raise KeyError("hidden_units")

    def wrong(spec, options):
        return object()

    with pytest.raises(TrainerSetupError, match=r"the factory raised KeyError: 'hidden_units'"):
        PluginTrainer("mine:raising", raising, {}).init_weights(0)
    with pytest.raises(TrainerSetupError, match=r"returned object, not a Trainer \(it lacks"):
        PluginTrainer("mine:wrong", wrong, {}).init_weights(0)


def test_an_installed_packages_entry_point_is_a_trainer_name(tmp_path, monkeypatch):
    # GIVEN an installed distribution declaring a trainer in the fedasync.trainers group
    info = tmp_path / "hospital_fl-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hospital-fl\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[fedasync.trainers]\nhospital = tests.integration.byo_plugins:numpy_factory\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    # WHEN a silo names it
    trainer = get_trainer("hospital", num_features=64)
    trainer.fit(NumpyTrainer().init_weights(0), X, Y, epochs=1, seed=0)
    # THEN its factory built the trainer; and the name is listed among those available
    assert len(byo_plugins.calls) == 1
    with pytest.raises(TrainerSetupError, match="available: hospital, keras, numpy"):
        load_factory("clinic")


def test_trainer_options_read_numbers_and_booleans():
    assert parse_options(["lr=0.05", "filters=16", "bn=true", "act=relu", "note=a=b"]) == {
        "lr": 0.05,
        "filters": 16,
        "bn": True,
        "act": "relu",
        "note": "a=b",
    }
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_options(["lr"])


@pytest.fixture
def keras():
    pytest.importorskip("tensorflow")
    import keras

    return keras


def _compiled(keras, model):
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


@pytest.mark.tf
def test_any_keras_model_is_named_by_variable_path_without_the_models_name(keras):
    from client.trainers.keras_model import KerasModelTrainer

    # GIVEN the same layers as a functional, a sequential and a subclassed model
    def layers():
        return [
            keras.layers.Dense(4, name="hidden"),
            keras.layers.BatchNormalization(name="norm"),
            keras.layers.Dropout(0.1, name="drop"),  # its seed state is an int: kept local
            keras.layers.Dense(3, name="out"),
        ]

    inputs = keras.Input((5,))
    x = inputs
    for layer in layers():
        x = layer(x)
    functional = keras.Model(inputs, x, name="functional_model")
    sequential = keras.Sequential([keras.Input((5,)), *layers()], name="seq")

    class Sub(keras.Model):
        def __init__(self):
            super().__init__(name="sub")
            self.parts = layers()

        def call(self, x):
            for part in self.parts:
                x = part(x)
            return x

    subclassed = Sub()
    subclassed(np.zeros((1, 5), np.float32))
    expected = [
        "hidden/kernel", "hidden/bias", "norm/gamma", "norm/beta", "norm/moving_mean",
        "norm/moving_variance", "out/kernel", "out/bias",
    ]  # fmt: skip
    # THEN each names its tensors the same: layer/variable, float only
    for model in (functional, sequential, subclassed):
        weights = KerasModelTrainer(_compiled(keras, model)).init_weights(0)
        assert list(weights) == expected, model.name


@pytest.mark.tf
def test_keras_model_trainer_trains_on_flat_arrays_reshaped_or_on_a_tf_data_dataset(keras):
    import tensorflow as tf

    from client.trainers.keras_model import KerasModelTrainer

    # GIVEN a model taking (2, 2, 1) images and 6 flat examples of 4 features
    inputs = keras.Input((2, 2, 1))
    out = keras.layers.Dense(2, activation="softmax", name="out")(keras.layers.Flatten()(inputs))
    model = _compiled(keras, keras.Model(inputs, out))
    x = np.arange(24, dtype=np.float32).reshape(6, 4) / 24
    y = np.array([0, 1, 0, 1, 0, 1])
    arrays = KerasModelTrainer(model, batch_size=2)
    start = arrays.init_weights(0)
    # WHEN it trains on the arrays (reshaped to the model's input), and on a tf.data
    # pipeline of 3 batches of 2 (examples counted over the batches)
    on_arrays = arrays.fit(start, x, y, epochs=1, seed=0)
    ds = tf.data.Dataset.from_tensor_slices((x.reshape(6, 2, 2, 1), y)).batch(2)
    on_ds = KerasModelTrainer(model, data=ds, eval_data=ds).fit(start, x[:0], y[:0], epochs=1,
                                                               seed=0)  # fmt: skip
    # THEN both moved the model and count 6 examples; the given weights are untouched
    assert on_arrays.num_examples == on_ds.num_examples == 6
    assert not np.array_equal(on_arrays.weights["out/kernel"], start["out/kernel"])
    assert set(arrays.evaluate(on_arrays.weights, x, y)) >= {"loss", "accuracy"}
    with pytest.raises(ValueError, match=r"examples of shape \(3,\); model .* takes \(2, 2, 1\)"):
        arrays.fit(start, x[:, :3], y, epochs=1, seed=0)
