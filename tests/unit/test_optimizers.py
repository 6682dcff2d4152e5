"""Server optimizers (FedAvgM, FedAdam, FedYogi, FedAdagrad): two steps worked out by hand
for each kind, bias correction and v0, the state's round trip through safetensors, the
config model; Flower's FedAvgM/FedYogi/FedAdagrad maths as an independent oracle."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedasync.core.codec import decode, encode
from fedasync.core.errors import ConfigError, InvalidWeightsError, SchemaError
from fedasync.core.optimizers import (
    DEFAULTS,
    OptimizerState,
    ServerOptimizer,
    server_step,
    state_from_tensors,
    state_to_tensors,
)

# Hand numbers: a 2-coordinate float64 model at x0 = [1, 1]; the first aggregate moves it
# by Delta1 = [2, 2], the second by Delta2 = [1, 3]. Hyper: lr 0.5, beta1 0.5, beta2 0.75,
# tau 1 (round numbers, so the arithmetic stays short).
H = {"lr": 0.5, "beta1": 0.5, "tau": 1.0}
D1, D2 = np.array([2.0, 2.0]), np.array([1.0, 3.0])


def _two_steps(kind, **hyper):
    x0 = {"w": np.array([1.0, 1.0])}
    x1, s1 = server_step(kind, x0, {"w": x0["w"] + D1}, None, **hyper)
    x2, s2 = server_step(kind, x1, {"w": x1["w"] + D2}, s1, **hyper)
    return x1["w"], x2["w"], s1, s2


def test_adam_two_steps_by_hand():
    x1, x2, s1, s2 = _two_steps("adam", **H, beta2=0.75)
    # step 1: m = 0.5*0 + 0.5*2 = 1; v = 0.75*0 + 0.25*4 = 1; x = 1 + 0.5*1/(sqrt(1)+1) = 1.25
    assert x1.tolist() == [1.25, 1.25]
    assert s1.tensors["m/w"].tolist() == [1.0, 1.0] and s1.tensors["v/w"].tolist() == [1.0, 1.0]
    # step 2: m = 0.5*1 + 0.5*[1, 3] = [1, 2]; v = 0.75*1 + 0.25*[1, 9] = [1, 3]
    # x = 1.25 + 0.5*[1, 2]/(sqrt([1, 3]) + 1) = [1.5, 1.25 + 1/(sqrt(3) + 1)]
    assert s2.tensors["m/w"].tolist() == [1.0, 2.0] and s2.tensors["v/w"].tolist() == [1.0, 3.0]
    assert x2.tolist() == pytest.approx([1.5, 1.25 + 1 / (math.sqrt(3) + 1)], rel=1e-15)
    assert (s1.step, s2.step) == (1, 2)


def test_yogi_two_steps_by_hand():
    x1, x2, _, s2 = _two_steps("yogi", **H, beta2=0.75)
    # step 1: v = 0 - 0.25*4*sign(0 - 4) = 1 (as adam): x = 1.25
    assert x1.tolist() == [1.25, 1.25]
    # step 2: v[0] = 1 - 0.25*1*sign(1 - 1) = 1 (sign 0); v[1] = 1 - 0.25*9*sign(1 - 9) = 3.25
    # m = [1, 2] as adam; x = [1.25 + 0.5*1/2, 1.25 + 0.5*2/(sqrt(3.25) + 1)]
    assert s2.tensors["v/w"].tolist() == [1.0, 3.25]
    assert x2.tolist() == pytest.approx([1.5, 1.25 + 1 / (math.sqrt(3.25) + 1)], rel=1e-15)


def test_adagrad_two_steps_by_hand():
    x1, x2, _, s2 = _two_steps("adagrad", **H)
    # step 1: m = 0.5*2 = 1; v = 0 + 4 = 4; x = 1 + 0.5*1/(2 + 1) = 7/6
    assert x1.tolist() == pytest.approx([7 / 6, 7 / 6], rel=1e-15)
    # step 2: m = 0.5*1 + 0.5*[1, 3] = [1, 2]; v = 4 + [1, 9] = [5, 13]
    # x = 7/6 + 0.5*[1, 2]/(sqrt([5, 13]) + 1)
    assert s2.tensors["v/w"].tolist() == pytest.approx([5.0, 13.0], rel=1e-15)
    expected = [7 / 6 + 0.5 / (math.sqrt(5) + 1), 7 / 6 + 1 / (math.sqrt(13) + 1)]
    assert x2.tolist() == pytest.approx(expected, rel=1e-15)


def test_avgm_two_steps_by_hand_and_with_the_defaults():
    x1, x2, s1, s2 = _two_steps("avgm", lr=0.5, beta1=0.5)
    # step 1: m = 0.5*0 + 2 = 2; x = 1 + 0.5*2 = 2; step 2: m = 0.5*2 + [1, 3] = [2, 4];
    # x = 2 + 0.5*[2, 4] = [3, 4]
    assert x1.tolist() == [2.0, 2.0] and x2.tolist() == [3.0, 4.0]
    assert s1.tensors["m/w"].tolist() == [2.0, 2.0] and s2.tensors["m/w"].tolist() == [2.0, 4.0]
    assert list(s2.tensors) == ["m/w"]
    # defaults lr 1, beta1 0.9: m = 2, x = 3; then m = 0.9*2 + [1, 3] = [2.8, 4.8], x = 3 + m
    x1, x2, _, _ = _two_steps("avgm")
    assert x1.tolist() == [3.0, 3.0]
    assert x2.tolist() == pytest.approx([5.8, 7.8], rel=1e-15)


def test_adam_with_the_documented_defaults_on_a_float32_model():
    # GIVEN lr 0.01, beta1 0.9, beta2 0.99, tau 0.001; x = 1, aggregate 1.5: Delta = 0.5
    g, a = {"w": np.array([1.0], np.float32)}, {"w": np.array([1.5], np.float32)}
    new, state = server_step("adam", g, a, None)
    # m = 0.1*0.5 = 0.05; v = 0.01*0.25 = 0.0025; x = 1 + 0.01*0.05/(0.05 + 0.001)
    assert new["w"].dtype == np.float32 and state.tensors["m/w"].dtype == np.float64
    assert new["w"][0] == np.float32(1 + 0.01 * 0.05 / (0.05 + 0.001))


def test_bias_correction_divides_the_moments_by_one_minus_beta_to_the_t():
    x1, x2, _, _ = _two_steps("adam", **H, beta2=0.75, bias_correction=True)
    # step 1: m^ = 1/(1 - 0.5) = 2; v^ = 1/(1 - 0.75) = 4; x = 1 + 0.5*2/(2 + 1) = 4/3
    assert x1.tolist() == pytest.approx([4 / 3, 4 / 3], rel=1e-15)
    # step 2: m = [1, 2] -> m^ = m/(1 - 0.25) = [4/3, 8/3]; v = [1, 3] -> v^ = v/(1 - 0.5625)
    # = [16/7, 48/7]; x = 4/3 + 0.5*m^/(sqrt(v^) + 1)
    expected = [
        4 / 3 + 0.5 * (4 / 3) / (math.sqrt(16 / 7) + 1),
        4 / 3 + 0.5 * (8 / 3) / (math.sqrt(48 / 7) + 1),
    ]
    assert x2.tolist() == pytest.approx(expected, rel=1e-14)
    # adagrad: only m is corrected (v is a sum): step 1 x = 1 + 0.5*2/(sqrt(4) + 1) = 4/3
    x1, _, _, _ = _two_steps("adagrad", **H, bias_correction=True)
    assert x1.tolist() == pytest.approx([4 / 3, 4 / 3], rel=1e-15)


def test_v0_starts_the_second_moment_there():
    # v0 = tau^2 = 1 (the paper's v_{-1} >= tau^2): v = 0.75*1 + 0.25*4 = 1.75
    x1, _, s1, _ = _two_steps("adam", **H, beta2=0.75, v0=1.0)
    assert s1.tensors["v/w"].tolist() == [1.75, 1.75]
    assert x1.tolist() == pytest.approx([1 + 0.5 * 1 / (math.sqrt(1.75) + 1)] * 2, rel=1e-15)


def test_server_step_leaves_its_inputs_and_the_given_state_as_they_were():
    g = {"a": np.array([1.0, 2.0]), "b": np.array(3.0)}
    agg = {"a": np.array([2.0, 2.0]), "b": np.array(1.0)}
    _, s1 = server_step("yogi", g, agg, None)
    before = {k: v.copy() for k, v in s1.tensors.items()}
    new, s2 = server_step("yogi", g, agg, s1)
    assert all(np.array_equal(before[k], s1.tensors[k]) for k in before)
    assert g["a"].tolist() == [1.0, 2.0] and list(new) == ["a", "b"]
    assert list(s2.tensors) == ["m/a", "m/b", "v/a", "v/b"]


# ---------------------------------------------------------------- state round trip


def test_the_state_round_trips_through_safetensors_byte_for_byte():
    # GIVEN a state after two adam steps on a model of two tensors
    g = {"k": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([0.5], np.float32)}
    agg = {"k": g["k"] * 1.5 - 0.25, "b": np.array([-1.0], np.float32)}
    _, s1 = server_step("adam", g, agg, None)
    _, s2 = server_step("adam", g, agg, s1)
    # WHEN stored as a safetensors object and read back
    blob = encode(state_to_tensors(s2), who="optimizer state")
    back = state_from_tensors(decode(blob, who="optimizer state"))
    # THEN the same tensors, step and bytes; and the next step is the same, bit for bit
    assert back.step == 2 and list(back.tensors) == list(s2.tensors)
    assert encode(state_to_tensors(back)) == blob
    a, sa = server_step("adam", g, agg, s2)
    b, sb = server_step("adam", g, agg, back)
    assert encode(a) == encode(b) and encode(state_to_tensors(sa)) == encode(state_to_tensors(sb))


@pytest.mark.parametrize(
    ("tensors", "match"),
    [
        ({"m/w": np.zeros(1)}, "no 'step'"),
        ({"step": np.array(1.5), "m/w": np.zeros(1)}, "whole number"),
        ({"step": np.array([1.0]), "m/w": np.zeros(1)}, "0-d float64"),
        ({"step": np.array(1.0), "w": np.zeros(1)}, "m/... or v/..."),
        ({"step": np.array(1.0), "m/w": np.zeros(1, np.float32)}, "expected float64"),
    ],
)
def test_a_malformed_state_is_a_schema_error(tensors, match):
    with pytest.raises(SchemaError, match=match):
        state_from_tensors(tensors)


def test_a_state_of_another_kind_or_model_is_refused():
    g, agg = {"w": np.zeros(2)}, {"w": np.ones(2)}
    _, avgm_state = server_step("avgm", g, agg, None)
    with pytest.raises(SchemaError, match=r"missing \['v/w'\]"):
        server_step("adam", g, agg, avgm_state)
    with pytest.raises(SchemaError, match="expected float64"):
        server_step("avgm", g, agg, OptimizerState(1, {"m/w": np.zeros(3)}))
    with pytest.raises(SchemaError, match="shape"):
        server_step("avgm", g, {"w": np.ones(3)}, None)


# ---------------------------------------------------------------- config


def test_the_config_fills_the_kinds_defaults_and_refuses_what_the_kind_does_not_use():
    cfg = ServerOptimizer(kind="adam")
    assert cfg.hyper() == DEFAULTS["adam"]
    assert cfg.hyper() == {
        "lr": 0.01, "beta1": 0.9, "beta2": 0.99, "tau": 0.001, "v0": 0.0, "bias_correction": False
    }  # fmt: skip
    assert ServerOptimizer(kind="avgm", lr=0.5).hyper() == {"lr": 0.5, "beta1": 0.9}
    # a stored config (every field dumped, None for the unused) reads back the same
    dumped = ServerOptimizer(kind="avgm").model_dump()
    assert ServerOptimizer.model_validate(dumped) == ServerOptimizer(kind="avgm")
    # its step is server_step with its hyper-parameters
    g, agg = {"w": np.array([1.0])}, {"w": np.array([3.0])}
    cfg = ServerOptimizer(kind="avgm", lr=0.5, beta1=0.5)
    assert cfg.step(g, agg, None)[0]["w"].tolist() == [2.0]  # m = 2, x = 1 + 0.5*2
    with pytest.raises(ValueError, match="beta2 not used by server optimizer 'avgm'"):
        ServerOptimizer(kind="avgm", beta2=0.9)
    with pytest.raises(ValueError, match="beta2 not used by server optimizer 'adagrad'"):
        ServerOptimizer(kind="adagrad", beta2=0.9)


@pytest.mark.parametrize(
    ("hyper", "field"),
    [
        ({"lr": 0.0}, "lr"),
        ({"lr": 11.0}, "lr"),
        ({"beta1": 1.0}, "beta1"),
        ({"beta2": -0.1}, "beta2"),
        ({"tau": 0.0}, "tau"),
        ({"v0": -1.0}, "v0"),
        ({"momentum": 0.9}, "momentum"),
    ],
)
def test_out_of_range_hyper_parameters_are_a_config_error_naming_the_field(hyper, field):
    g = {"w": np.zeros(1)}
    with pytest.raises(ConfigError, match=rf"server optimizer 'yogi': {field}"):
        server_step("yogi", g, g, None, **hyper)


def test_an_unknown_kind_is_a_config_error():
    g = {"w": np.zeros(1)}
    with pytest.raises(ConfigError, match="kind"):
        server_step("sgd", g, g, None)


# ---------------------------------------------------------------- Flower as an oracle


def _flower_steps(strategy, x0, deltas):
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

    x = x0
    out = []
    for rnd, delta in enumerate(deltas, start=1):
        fit = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([x + delta]), 1, {})
        params, _ = strategy.aggregate_fit(rnd, [(None, fit)], [])
        x = parameters_to_ndarrays(params)[0]
        out.append(x)
    return out


@pytest.mark.parametrize("kind", ["avgm", "yogi", "adagrad"])
def test_three_steps_agree_with_flowers_strategy_maths(kind):
    # GIVEN Flower's FedAvgM / FedYogi / FedAdagrad (no bias correction; FedAdam is left
    # out: Flower folds a bias correction into its step size) with one client per round
    flwr = pytest.importorskip("flwr.server.strategy")
    from flwr.common import ndarrays_to_parameters

    x0 = np.array([0.5, -1.0, 2.0])
    deltas = [np.array([0.3, -0.2, 0.1]), np.array([-0.1, 0.4, 0.0]), np.array([0.2, 0.2, -0.5])]
    init = ndarrays_to_parameters([x0])
    hyper = {
        "avgm": {"lr": 0.7, "beta1": 0.6},
        "yogi": {"lr": 0.05, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3},
        "adagrad": {"lr": 0.1, "beta1": 0.0, "tau": 1e-3},
    }[kind]
    strategy = {
        "avgm": lambda: flwr.FedAvgM(
            initial_parameters=init, server_learning_rate=0.7, server_momentum=0.6
        ),
        "yogi": lambda: flwr.FedYogi(
            initial_parameters=init, eta=0.05, beta_1=0.9, beta_2=0.99, tau=1e-3
        ),
        "adagrad": lambda: flwr.FedAdagrad(initial_parameters=init, eta=0.1, tau=1e-3),
    }[kind]()
    theirs = _flower_steps(strategy, x0, deltas)
    # WHEN the same aggregates go through server_step
    x, state = {"w": x0}, None
    for delta, want in zip(deltas, theirs, strict=True):
        x, state = server_step(kind, x, {"w": x["w"] + delta}, state, **hyper)
        # THEN each new global agrees to rounding
        np.testing.assert_allclose(x["w"], want, rtol=1e-12, atol=1e-15)


def test_a_non_finite_or_mismatched_input_is_refused_naming_it():
    g = {"w": np.zeros(2)}
    with pytest.raises(InvalidWeightsError, match="the aggregate has NaN/Inf"):
        server_step("adam", g, {"w": np.array([1.0, np.inf])}, None)
    with pytest.raises(SchemaError, match=r"the aggregate has tensor 'w' of shape \(3,\).*the global has shape \(2,\)"):
        server_step("adam", g, {"w": np.zeros(3)}, None)


# ---------------------------------------------------------------- properties

_vec = hnp.arrays(np.float32, (3,), elements=st.floats(-10, 10, width=32))


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(["avgm", "adam", "yogi", "adagrad"]), x=_vec)
def test_a_zero_pseudo_gradient_from_a_fresh_state_leaves_the_model_as_it_was(kind, x):
    # GIVEN aggregate == global: Delta = 0, so m = 0 and the step is lr * 0 / (sqrt(v) + tau)
    new, state = server_step(kind, {"w": x}, {"w": x.copy()}, None)
    # THEN every value is unchanged (a -0.0 may come back as +0.0: x + 0.0)
    np.testing.assert_array_equal(new["w"], x)
    assert not state.tensors["m/w"].any()


@settings(max_examples=30, deadline=None)
@given(
    kind=st.sampled_from(["avgm", "adam", "yogi", "adagrad"]),
    x0=_vec,
    deltas=st.lists(_vec, min_size=2, max_size=5),
    cut=st.integers(1, 4),
    bias=st.booleans(),
)
def test_a_state_stored_and_read_back_mid_run_replays_the_same_bytes(kind, x0, deltas, cut, bias):
    # GIVEN a run of steps; WHEN the state is stored as safetensors after `cut` steps and
    # read back (as the server and replay do) THEN every later model and state is the same
    hyper = {} if kind == "avgm" else {"bias_correction": bias}

    def run(store_at):
        x, state, out = {"w": x0}, None, []
        for i, d in enumerate(deltas):
            x, state = server_step(kind, x, {"w": x["w"] + d}, state, **hyper)
            if i + 1 == store_at:
                state = state_from_tensors(decode(encode(state_to_tensors(state))))
            out.append(encode(x) + encode(state_to_tensors(state)))
        return out

    assert run(cut) == run(None)
