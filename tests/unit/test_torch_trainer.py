"""The PyTorch trainer: state_dict <-> wire weights, buffer modes, one hand-checked step."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedasync.core import codec
from fedasync.core.errors import IncompatibleUpdateError, SchemaError

torch = pytest.importorskip("torch")
from client.trainers.torch_trainer import TorchTrainer, federated_names  # noqa: E402

pytestmark = pytest.mark.torch
nn = torch.nn


def linear_bn() -> object:
    return nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))


def sgd(lr: float):
    return lambda params: torch.optim.SGD(params, lr=lr)


def test_wire_names_are_state_dict_keys_and_integer_buffers_stay_home() -> None:
    # GIVEN a Linear followed by a BatchNorm (parameters, float buffers, an int64 counter)
    module = linear_bn()
    # WHEN the federated names are listed per buffer mode
    federate = federated_names(module, "federate")
    local = federated_names(module, "local")
    # THEN federate sends parameters and running statistics, in state_dict order;
    # local sends parameters only; num_batches_tracked (int64) is never sent
    assert federate == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
    ]
    assert local == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert "1.num_batches_tracked" in module.state_dict()


def test_weights_round_trip_through_safetensors(tmp_path) -> None:
    # GIVEN a trainer over a module and weights with known values
    trainer = TorchTrainer(linear_bn(), optimizer_factory=sgd(0.1), loss_fn=nn.MSELoss())
    given = {
        "0.weight": np.array([[1.0, 2.0], [3.0, 4.0]], np.float32),
        "0.bias": np.array([0.5, -0.5], np.float32),
        "1.weight": np.array([2.0, 3.0], np.float32),
        "1.bias": np.array([0.0, 1.0], np.float32),
        "1.running_mean": np.array([0.25, 0.75], np.float32),
        "1.running_var": np.array([4.0, 9.0], np.float32),
    }
    # WHEN they are written as safetensors, read back and loaded into the module
    codec.write_file(given, tmp_path / "m.safetensors", "test")
    trainer.load(codec.read_file(tmp_path / "m.safetensors", who="test"))
    # THEN the module's state_dict holds exactly those values, and reading it gives them back
    state = trainer.module.state_dict()
    assert state["0.weight"].tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert state["1.running_var"].tolist() == [4.0, 9.0]
    back = trainer.weights()
    assert list(back) == list(given)
    for name, value in given.items():
        np.testing.assert_array_equal(back[name], value)
        assert back[name].dtype == np.float32


def test_one_sgd_step_on_mse_matches_the_hand_computation() -> None:
    # GIVEN y = w*x with w = 1, data x = (1, 2), targets y = (0, 0), SGD lr 0.1, one batch
    module = nn.Linear(1, 1, bias=False)
    trainer = TorchTrainer(module, None, sgd(0.1), nn.MSELoss(), batch_size=2)
    x = np.array([[1.0], [2.0]], np.float32)
    y = np.array([0.0, 0.0], np.float32)
    # WHEN it trains one epoch from w = 1
    result = trainer.fit({"weight": np.array([[1.0]], np.float32)}, x, y, epochs=1, seed=0)
    # THEN loss = ((1-0)^2 + (2-0)^2) / 2 = 2.5; dL/dw = (2*1*1 + 2*2*2) / 2 = 5;
    # w = 1 - 0.1 * 5 = 0.5; regression: no accuracy is reported
    assert result.weights["weight"].tolist() == [[pytest.approx(0.5)]]
    assert result.num_examples == 2
    assert result.metrics == {"train_loss": pytest.approx(2.5)}


@pytest.mark.parametrize("mode", ["federate", "local"])
def test_running_statistics_are_sent_or_kept_local(mode: str) -> None:
    # GIVEN a BatchNorm1d(1) (momentum 0.1, running mean 0, var 1) and lr 0 (the affine
    # parameters stay put), trained on one batch x = (1, 3)
    module = nn.Sequential(nn.BatchNorm1d(1))
    trainer = TorchTrainer(module, None, sgd(0.0), nn.MSELoss(), buffers=mode, batch_size=2)
    start = trainer.weights()
    x = np.array([[1.0], [3.0]], np.float32)
    result = trainer.fit(start, x, np.zeros(2, np.float32), epochs=1, seed=0)
    # THEN the running mean is 0.9*0 + 0.1*2 = 0.2 and the running variance 0.9*1 +
    # 0.1*2 = 1.1 (batch variance of (1, 3), unbiased: 2); the batch counter is 1
    state = module.state_dict()
    assert float(state["0.running_mean"]) == pytest.approx(0.2)
    assert float(state["0.running_var"]) == pytest.approx(1.1)
    assert int(state["0.num_batches_tracked"]) == 1
    if mode == "federate":
        # ... and they go on the wire with the parameters
        assert float(result.weights["0.running_mean"][0]) == pytest.approx(0.2)
        assert float(result.weights["0.running_var"][0]) == pytest.approx(1.1)
    else:
        # ... or stay home: a new global model leaves them untouched
        assert list(result.weights) == ["0.weight", "0.bias"]
        trainer.load({"0.weight": np.array([5.0], np.float32), "0.bias": np.zeros(1, np.float32)})
        assert float(module.state_dict()["0.running_mean"]) == pytest.approx(0.2)
        assert float(module.state_dict()["0.weight"]) == 5.0


def test_evaluate_reports_loss_and_accuracy_for_classification() -> None:
    # GIVEN identity logits: x = e0 -> logits (1, 0), x = e1 -> (0, 1); labels 0, 1, 1
    trainer = TorchTrainer(nn.Linear(2, 2), loss_fn=nn.CrossEntropyLoss())
    weights = {"weight": np.eye(2, dtype=np.float32), "bias": np.zeros(2, np.float32)}
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], np.float32)
    y = np.array([0, 1, 1], np.int64)
    # WHEN evaluated
    scores = trainer.evaluate(weights, x, y)
    # THEN two of three are right; the loss is the mean of log(1 + e^-1) twice and
    # log(1 + e) once (softmax cross-entropy of logits (1, 0))
    expected = (2 * math.log(1 + math.exp(-1)) + math.log(1 + math.e)) / 3
    assert scores == {"loss": pytest.approx(expected, rel=1e-6), "accuracy": pytest.approx(2 / 3)}


def test_weights_that_do_not_fit_the_module_name_the_tensor() -> None:
    # GIVEN a Linear(4, 2) trainer
    trainer = TorchTrainer(nn.Linear(4, 2))
    # WHEN given a weight of shape (2, 3), or a model without the bias
    # THEN the error names the tensor and both shapes, or what is missing
    with pytest.raises(IncompatibleUpdateError, match=r"'weight' of shape \(2, 3\).*\(2, 4\)"):
        trainer.load({"weight": np.zeros((2, 3), np.float32), "bias": np.zeros(2, np.float32)})
    with pytest.raises(IncompatibleUpdateError, match=r"missing \['bias'\]"):
        trainer.load({"weight": np.zeros((2, 4), np.float32)})


def test_data_of_the_wrong_feature_shape_is_refused_before_training() -> None:
    # GIVEN a model taking 4 features and data with 3
    trainer = TorchTrainer(nn.Linear(4, 2))
    weights = trainer.init_weights(0)
    # WHEN the data is checked against the task's model
    # THEN a SchemaError names where the data came from and its example shape
    with pytest.raises(SchemaError, match=r"data 'silo\.npz' has examples of shape \(3,\)") as err:
        trainer.check_data(weights, np.zeros((5, 3), np.float32), "data 'silo.npz'")
    assert err.value.reason == "feature_shape"
    trainer.check_data(weights, np.zeros((5, 4), np.float32), "data 'ok.npz'")  # fits


def test_init_weights_is_deterministic_for_a_seed_and_bfloat16_is_refused() -> None:
    # GIVEN two trainers over differently initialised modules of one architecture
    a, b = TorchTrainer(nn.Linear(3, 2)), TorchTrainer(nn.Linear(3, 2))
    # THEN the same seed gives the same version 0, another seed another one
    np.testing.assert_array_equal(a.init_weights(7)["weight"], b.init_weights(7)["weight"])
    assert not np.array_equal(a.init_weights(7)["weight"], a.init_weights(8)["weight"])
    # AND a bfloat16 module (a dtype the server refuses) is refused up front, with the fix
    with pytest.raises(SchemaError, match=r"'weight' has dtype bfloat16.*module\.float\(\)"):
        TorchTrainer(nn.Linear(3, 2).to(torch.bfloat16))


def test_a_train_loader_is_the_data() -> None:
    # GIVEN a DataLoader of 3 regression examples, batch 3, and w = 0 (y = w*x, no bias)
    xs = torch.tensor([[1.0], [2.0], [3.0]])
    ys = torch.tensor([[2.0], [4.0], [6.0]])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xs, ys), batch_size=3)
    trainer = TorchTrainer(nn.Linear(1, 1, bias=False), loader, sgd(0.1), nn.MSELoss())
    # WHEN it fits (the arrays the client passes are ignored)
    result = trainer.fit(
        {"weight": np.zeros((1, 1), np.float32)}, np.empty((0, 1)), np.empty(0), epochs=1, seed=0
    )
    # THEN loss = (4 + 16 + 36) / 3; dL/dw = -2 (2*1 + 4*2 + 6*3) / 3 = -56/3;
    # w = 0.1 * 56/3; 3 examples counted
    assert result.metrics == {"train_loss": pytest.approx(56 / 3)}
    assert result.weights["weight"][0, 0] == pytest.approx(0.1 * 56 / 3, rel=1e-6)
    assert result.num_examples == 3
