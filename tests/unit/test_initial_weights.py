"""The task's initial weights are checked once; `fedasync model export` writes them from Keras
or torch (each imported only when asked for)."""

from __future__ import annotations

import os
import sys

import ml_dtypes
import numpy as np
import pytest
from typer.testing import CliRunner

from fedasync import logs
from fedasync.cli import app
from fedasync.core import codec
from fedasync.core.config import TaskConfig
from fedasync.core.errors import (
    ConfigError,
    IncompatibleUpdateError,
    InvalidWeightsError,
    PayloadTooLargeError,
    SchemaError,
)
from fedasync.core.initial import check_initial
from fedasync.ops.model_export import export_model

CFG = TaskConfig.parse({"task_name": "t", "clients": ["a"]})
MODEL = {"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)}


def test_a_valid_model_passes_and_its_encoded_size_is_returned():
    # GIVEN a float32 model of 6 + 3 elements
    # WHEN it is checked against a task
    size = check_initial(MODEL, CFG, "initial weights 'm.safetensors'")
    # THEN its safetensors size is returned: 36 data bytes plus the 8-byte length and header
    assert size == len(codec.encode(MODEL)) and size > 36 + 8


@pytest.mark.parametrize(
    ("weights", "error", "says"),
    [
        ({}, SchemaError, "has no tensors"),
        ({"w": np.ones(2, np.int32)}, IncompatibleUpdateError, "tensor 'w' has dtype int32"),
        ({"w": np.array([1.0, np.nan], np.float32)}, InvalidWeightsError, "tensor 'w'"),
        ({"__metadata__": np.ones(2, np.float32)}, SchemaError, "'__metadata__' is not usable"),
    ],
    ids=["empty", "integer", "nan", "reserved-name"],
)
def test_an_unusable_model_is_refused_naming_what_and_where(weights, error, says):
    # GIVEN initial weights no update could match or no silo could be sent
    # WHEN they are checked
    # THEN the error names the file and the tensor
    with pytest.raises(error) as info:
        check_initial(weights, CFG, "initial weights 'm.safetensors'")
    assert says in str(info.value)
    assert "initial weights 'm.safetensors'" in str(info.value)


def test_a_model_larger_than_max_model_bytes_is_refused():
    # GIVEN a task allowing 64 bytes and a model of 4,000 float32 values (16,000 bytes)
    cfg = TaskConfig.parse({"task_name": "t", "clients": ["a"], "max_model_bytes": 64})
    # WHEN checked THEN refused, naming the setting
    with pytest.raises(PayloadTooLargeError, match=r"allows 64 \(max_model_bytes\)"):
        check_initial({"w": np.zeros(4000, np.float32)}, cfg, "m")


def test_torch_state_dict_exports_float_tensors_and_leaves_out_integer_buffers(tmp_path):
    # GIVEN a torch module with a BatchNorm layer, its state_dict saved
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    state = module.state_dict()
    torch.save(state, tmp_path / "m.pt")
    # WHEN it is exported
    out = export_model(tmp_path / "m.pt")
    # THEN every float tensor is there, in state_dict order, with its values; the int64
    # counter BatchNorm keeps is left out and named
    assert list(out.weights) == [
        "0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
    ]  # fmt: skip
    np.testing.assert_array_equal(out.weights["0.weight"], state["0.weight"].numpy())
    assert out.left_out == (("1.num_batches_tracked", "int64"),)


def test_a_bfloat16_torch_state_dict_exports_as_bf16_bit_for_bit(tmp_path):
    # GIVEN a bf16 torch module's state_dict (numpy has no bf16 of its own)
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    state = torch.nn.Linear(4, 3).to(torch.bfloat16).state_dict()
    torch.save(state, tmp_path / "m.pt")
    # WHEN it is exported THEN each tensor is ml_dtypes' bfloat16 with torch's very bits,
    # and the codec writes it as BF16
    out = export_model(tmp_path / "m.pt")
    for name, tensor in state.items():
        assert out.weights[name].dtype == ml_dtypes.bfloat16
        assert out.weights[name].tobytes() == tensor.view(torch.int16).numpy().tobytes()
    assert b'"dtype":"BF16"' in codec.encode(out.weights)


def test_a_pickled_torch_module_is_refused_not_run(tmp_path):
    # GIVEN a whole module saved with torch.save (a pickle of code, not a state_dict)
    torch = pytest.importorskip("torch")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    # WHEN exported THEN torch's weights_only loader refuses it, and the error says what to save
    with pytest.raises(SchemaError, match=r"save `model.state_dict\(\)`, not the module"):
        export_model(tmp_path / "module.pt")


def test_without_torch_installed_the_error_says_what_to_install(tmp_path, monkeypatch):
    # GIVEN torch cannot be imported
    monkeypatch.setitem(sys.modules, "torch", None)
    (tmp_path / "m.pt").write_bytes(b"PK")
    # WHEN a state_dict is exported THEN a clear error names the extra
    with pytest.raises(ConfigError, match=r"pip install 'fedasync\[torch\]'"):
        export_model(tmp_path / "m.pt")


def test_unknown_suffix_is_a_clear_error(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"cannot tell the format from '\.onnx'"):
        export_model(tmp_path / "m.onnx")


@pytest.mark.tf
@pytest.mark.slow
def test_keras_file_exports_by_variable_path_and_the_cli_writes_safetensors(tmp_path):
    # GIVEN a functional Keras model with a Conv2D layer, saved as .keras
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    keras = pytest.importorskip("keras")
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(2, 3, name="conv")(inputs)
    x = keras.layers.Flatten(name="flat")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(x))
    model.save(tmp_path / "cnn.keras")
    # WHEN `fedasync model export` writes it out
    result = CliRunner().invoke(
        app, ["model", "export", str(tmp_path / "cnn.keras"), "--out", str(tmp_path / "m.st")]
    )
    # THEN the file holds each variable under its path with its shape (conv 3x3x1x2 + 2,
    # dense 6*6*2=72 x 3 + 3) and the values the model has
    assert result.exit_code == 0, result.output
    got = codec.read_file(tmp_path / "m.st")
    assert {n: a.shape for n, a in got.items()} == {
        "conv/kernel": (3, 3, 1, 2), "conv/bias": (2,), "head/kernel": (72, 3), "head/bias": (3,),
    }  # fmt: skip
    np.testing.assert_array_equal(got["head/kernel"], model.get_layer("head").kernel.numpy())
    assert "--initial-weights" in result.output
    # AND a Sequential model's tensors carry the names a silo's Keras trainer sends
    # (the variable path without the model's own name), not `seq/d/kernel`
    from client.trainers.keras_model import get_weights
    from fedasync.ops.model_export import export_model

    seq = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="d")], name="seq")
    seq.save(tmp_path / "seq.keras")
    exported = export_model(tmp_path / "seq.keras").weights
    assert set(exported) == {"d/kernel", "d/bias"} == set(get_weights(seq))


@pytest.mark.parametrize(
    ("update", "first"),
    [
        ({"w": MODEL["w"], "c": MODEL["b"]}, "tensor 'b' of the global model is missing"),
        ({**MODEL, "extra": MODEL["b"]}, "tensor 'extra' is not in the global model"),
        ({"w": MODEL["w"], "b": MODEL["b"][:2]}, "tensor 'b' of shape (2,)"),
        ({"w": MODEL["w"].astype(np.float64), "b": MODEL["b"]}, "tensor 'w' of dtype float64"),
    ],
    ids=["renamed", "extra", "shape", "dtype"],
)
def test_an_update_unlike_the_task_model_is_refused_naming_the_first_tensor_that_differs(
    update, first
):
    # GIVEN the task's model spec (w (2, 3) then b (3,), float32)
    spec = codec.spec_of(MODEL)
    # WHEN an update with other names, shapes or dtypes is validated
    with pytest.raises(IncompatibleUpdateError) as info:
        codec.validate(update, spec, "update 'u' from client 'a' for task 't'")
    # THEN the message names the first tensor that differs, in the model's order
    assert first in str(info.value)


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda d: d / "nope.safetensors", "does not exist (or is not a file)"),
        (
            lambda d: codec.write_file({"w": np.zeros(100, np.float32)}, d / "m.st") and d / "m.st",
            "allows 64 (max_model_bytes)",
        ),
    ],
    ids=["missing", "too-large"],
)
def test_task_start_refuses_unusable_initial_weights_before_any_aws_call(tmp_path, make, says):
    logs.configure(level="WARNING")  # bind the real stderr before CliRunner swaps it
    # GIVEN a task config allowing 64-byte models, and a missing or a 400+-byte model file
    (tmp_path / "task.yaml").write_text("task_name: t\nclients: [a]\nmax_model_bytes: 64\n")
    model = make(tmp_path)
    # WHEN the task is started from it (no stack is reachable at this endpoint)
    result = CliRunner().invoke(
        app,
        ["task", "start", "--config", str(tmp_path / "task.yaml"), "--initial-weights",
         str(model), "--endpoint", "http://127.0.0.1:9"],
    )  # fmt: skip
    # THEN one error line names the file and what is wrong, exit 1
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: initial weights {str(model)!r} ")
    assert says in lines[0]
