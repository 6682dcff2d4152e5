"""Trainers: one small interface; numpy softmax regression learns digits, federated too."""

from __future__ import annotations

import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from client.data import dirichlet_partition, load_digits, train_test_split
from client.trainers import TRAINERS, Trainer, get_trainer
from client.trainers.numpy_trainer import NumpyTrainer
from fedasync.core.fedavg import fedavg


@pytest.fixture(scope="module")
def digits():
    return train_test_split(load_digits(), 0.2, seed=0)


def test_registry_builds_trainers_that_satisfy_the_interface():
    trainer = get_trainer("numpy", learning_rate=0.1)
    assert isinstance(trainer, Trainer)
    assert trainer.learning_rate == 0.1
    assert set(TRAINERS) >= {"keras", "numpy"}
    with pytest.raises(ValueError, match="unknown trainer 'torch'; available: keras, numpy"):
        get_trainer("torch")


def test_choosing_the_keras_trainer_does_not_import_tensorflow():
    # a fresh interpreter: this test process may already hold TensorFlow
    code = (
        "import sys; from client.trainers import get_trainer; get_trainer('keras'); "
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_init_weights_are_ordered_named_float32_and_seeded():
    trainer = NumpyTrainer()
    weights = trainer.init_weights(seed=5)
    assert list(weights) == ["dense/kernel", "dense/bias"]
    assert weights["dense/kernel"].shape == (64, 10)
    assert weights["dense/bias"].shape == (10,)
    assert all(w.dtype == np.float32 for w in weights.values())
    np.testing.assert_array_equal(weights["dense/kernel"], trainer.init_weights(5)["dense/kernel"])


def test_fit_lowers_the_loss_and_reports_its_examples(digits):
    train, _ = digits
    trainer = NumpyTrainer()
    start = trainer.init_weights(0)
    before = trainer.evaluate(start, train.x, train.y)
    result = trainer.fit(start, train.x, train.y, epochs=1, seed=0)
    after = trainer.evaluate(result.weights, train.x, train.y)
    assert after["loss"] < before["loss"] / 2
    assert result.num_examples == len(train)
    assert result.metrics["train_loss"] == pytest.approx(after["loss"])
    assert list(result.weights) == list(start)
    assert all(w.dtype == np.float32 for w in result.weights.values())


def test_a_bf16_global_trains_in_float64_and_comes_back_in_bf16(digits):
    # GIVEN a bf16 global model
    train, _ = digits
    trainer = NumpyTrainer()
    start = {k: v.astype(ml_dtypes.bfloat16) for k, v in trainer.init_weights(0).items()}
    # WHEN the silo trains on it THEN the update is in bf16 (as the server requires) and
    # has learnt (the loss at least halves, as from a float32 start)
    result = trainer.fit(start, train.x, train.y, epochs=1, seed=0)
    assert all(w.dtype == ml_dtypes.bfloat16 for w in result.weights.values())
    before = trainer.evaluate(start, train.x, train.y)["loss"]
    assert trainer.evaluate(result.weights, train.x, train.y)["loss"] < before / 2


def test_fit_is_deterministic_and_leaves_its_input_untouched(digits):
    train, _ = digits
    trainer = NumpyTrainer()
    start = trainer.init_weights(0)
    copy = {k: v.copy() for k, v in start.items()}
    a = trainer.fit(start, train.x, train.y, epochs=2, seed=9)
    b = trainer.fit(start, train.x, train.y, epochs=2, seed=9)
    c = trainer.fit(start, train.x, train.y, epochs=2, seed=10)
    for name in start:
        np.testing.assert_array_equal(start[name], copy[name])
        np.testing.assert_array_equal(a.weights[name], b.weights[name])
    assert not np.array_equal(a.weights["dense/kernel"], c.weights["dense/kernel"])


def test_fedavg_over_five_non_iid_silos_reaches_90_percent_in_ten_rounds(digits):
    # GIVEN digits split over 5 silos with Dirichlet(0.5), a held-out 20 %
    train, test = digits
    parts = dirichlet_partition(train.y, 5, 0.5, seed=0)
    trainer = NumpyTrainer()
    weights = trainer.init_weights(0)
    # WHEN 10 FedAvg rounds of 2 local epochs run
    for round_id in range(10):
        updates = []
        for i, idx in enumerate(parts):
            result = trainer.fit(
                weights, train.x[idx], train.y[idx], epochs=2, seed=round_id * 10 + i
            )
            updates.append((result.weights, result.num_examples))
        weights = fedavg(updates)
    # THEN the global model scores >= 0.90 on held-out data
    assert trainer.evaluate(weights, test.x, test.y)["accuracy"] >= 0.90


def test_keras_trainer_has_the_numpy_trainers_tensor_names_and_learns(digits):
    pytest.importorskip("tensorflow")
    train, _ = digits
    keras_trainer = get_trainer("keras")
    weights = keras_trainer.init_weights(0)
    assert {k: v.shape for k, v in weights.items()} == {
        k: v.shape for k, v in NumpyTrainer().init_weights(0).items()
    }
    before = keras_trainer.evaluate(weights, train.x, train.y)
    result = keras_trainer.fit(weights, train.x, train.y, epochs=1, seed=0)
    after = keras_trainer.evaluate(result.weights, train.x, train.y)
    assert after["loss"] < before["loss"] / 2
    assert result.num_examples == len(train)
    # a model trained by numpy continues in keras: same names, same arithmetic
    np_weights = NumpyTrainer().fit(weights, train.x, train.y, epochs=1, seed=0).weights
    np_score = NumpyTrainer().evaluate(np_weights, train.x, train.y)["accuracy"]
    assert keras_trainer.evaluate(np_weights, train.x, train.y)["accuracy"] == pytest.approx(
        np_score, abs=1e-3
    )


def test_straggler_delay_is_one_lognormal_draw_per_update_spread_over_its_epochs(monkeypatch):
    import math
    import random

    import fedasync.ops.demo as demo

    slept: list[float] = []
    monkeypatch.setattr(demo.time, "sleep", slept.append)
    inner = get_trainer("numpy")
    straggler = demo.StragglerTrainer(inner, sigma=1.0, seed=7, base_s=0.5, fits_per_update=2)
    w = inner.init_weights(0)
    x = np.zeros((4, 64), np.float32)
    y = np.array([0, 1, 2, 3])
    for epoch in range(6):  # three updates of two epochs each
        straggler.fit(w, x, y, epochs=1, seed=epoch)
    rng = random.Random(7)
    expected = [0.5 * math.exp(rng.gauss(0.0, 1.0)) for _ in range(3)]
    assert slept == pytest.approx([d / 2 for d in expected for _ in range(2)])
