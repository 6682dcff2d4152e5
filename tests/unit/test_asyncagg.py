"""FedAsync and FedBuff, expected values worked out by hand from the papers' formulas."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedasync.core.asyncagg import AsyncState, absorb, stop_reason
from fedasync.core.config import TaskConfig
from fedasync.core.errors import (
    ConfigError,
    IncompatibleUpdateError,
    SchemaError,
    StaleUpdateError,
)


def cfg(**over):
    base = {"task_name": "t", "mode": "async", "clients": ["a", "b", "c"]}
    base.update(over)
    return TaskConfig.parse(base)


X = {"w": np.array([0.0, 10.0], np.float32)}
C = {"w": np.array([10.0, 0.0], np.float32)}


def test_fedasync_fresh_update_mixes_with_alpha():
    # staleness 0, constant s: a_t = 0.6; x = 0.4*[0,10] + 0.6*[10,0] = [6, 4]
    out = absorb(AsyncState(version=3), cfg(alpha=0.6), base_version=3, global_w=X, client_w=C)
    assert out.staleness == 0
    assert out.weight == pytest.approx(0.6)
    assert out.new_global["w"].tolist() == pytest.approx([6.0, 4.0])
    assert out.state == AsyncState(version=4, absorbed=1)


def test_fedasync_polynomial_staleness():
    # staleness 3, s = (1+3)^-0.5 = 0.5, a_t = 0.8*0.5 = 0.4; x = 0.6*[0,10] + 0.4*[10,0] = [4, 6]
    c = cfg(alpha=0.8, staleness="polynomial(0.5)")
    out = absorb(AsyncState(version=5), c, base_version=2, global_w=X, client_w=C)
    assert out.weight == pytest.approx(0.4)
    assert out.new_global["w"].tolist() == pytest.approx([4.0, 6.0])


def test_fedasync_hinge_at_exactly_b_and_just_over():
    c = cfg(alpha=0.5, staleness="hinge(10, 4)")
    at_b = absorb(AsyncState(version=4), c, base_version=0, global_w=X, client_w=C)
    assert at_b.weight == pytest.approx(0.5)  # s(4) = 1 since 4 <= b
    over = absorb(AsyncState(version=5), c, base_version=0, global_w=X, client_w=C)
    assert over.weight == pytest.approx(0.5 / 11)  # s(5) = 1/(10*(5-4)+1)


def test_alpha_is_never_compounded_across_updates():
    c = cfg(alpha=0.5)
    state, g = AsyncState(version=0), X
    for _ in range(3):
        out = absorb(state, c, base_version=state.version, global_w=g, client_w=C)
        assert out.weight == pytest.approx(0.5)
        state, g = out.state, out.new_global
    # [0,10] -> [5,5] -> [7.5,2.5] -> [8.75,1.25]
    assert g["w"].tolist() == pytest.approx([8.75, 1.25])


def test_alpha_one_returns_the_client_model():
    out = absorb(AsyncState(version=0), cfg(alpha=1.0), base_version=0, global_w=X, client_w=C)
    assert out.new_global["w"].tolist() == C["w"].tolist()


@settings(max_examples=100, deadline=None)
@given(
    hnp.arrays(np.float32, 4, elements=st.floats(-1e6, 1e6, width=32)),
    hnp.arrays(np.float32, 4, elements=st.floats(-1e6, 1e6, width=32)),
)
def test_fedasync_with_alpha_t_one_is_the_client_model(g, c):
    out = absorb(
        AsyncState(version=2), cfg(alpha=1.0), base_version=2, global_w={"w": g}, client_w={"w": c}
    )
    np.testing.assert_array_equal(out.new_global["w"], c)


def test_staleness_exactly_max_is_accepted_one_more_is_rejected():
    c = cfg(max_staleness=3)
    absorb(AsyncState(version=7), c, base_version=4, global_w=X, client_w=C)
    with pytest.raises(StaleUpdateError, match=r"stale: 4 > 3"):
        absorb(
            AsyncState(version=7),
            c,
            base_version=3,
            global_w=X,
            client_w=C,
            who="update from client 'a'",
        )


def test_base_version_from_the_future_is_a_schema_error():
    with pytest.raises(SchemaError, match="base version 9"):
        absorb(AsyncState(version=7), cfg(), base_version=9, global_w=X, client_w=C)


def test_mismatched_update_never_touches_the_model():
    with pytest.raises(IncompatibleUpdateError):
        absorb(
            AsyncState(), cfg(), base_version=0, global_w=X, client_w={"w": np.zeros(3, np.float32)}
        )


def _fedbuff_two_updates(c):
    """GIVEN head version 1 (x = [1, 1]); update 1 based on v1 (staleness 0, w = 1) with
    delta [2, 0], then update 2 based on v0 = [0, 0] (staleness 1, w = 1/sqrt(2)) with
    delta [0, 4]: returns both outcomes."""
    base0 = {"w": np.array([0.0, 0.0], np.float32)}
    x1 = {"w": np.array([1.0, 1.0], np.float32)}
    first = absorb(
        AsyncState(version=1),
        c,
        base_version=1,
        global_w=x1,
        client_w={"w": np.array([3.0, 1.0], np.float32)},
        base_w=x1,
    )
    second = absorb(
        first.state,
        c,
        base_version=0,
        global_w=x1,
        client_w={"w": np.array([0.0, 4.0], np.float32)},
        base_w=base0,
        buffer_sum=first.buffer_sum,
    )
    return first, second


def test_fedbuff_buffers_until_k_then_steps_by_weighted_mean_delta():
    # normalize "weights": the step divides by the sum of the staleness weights
    c = cfg(
        strategy="fedbuff",
        buffer_size=2,
        server_lr=0.5,
        strategy_options={"normalize": "weights"},
    )
    first, second = _fedbuff_two_updates(c)
    assert not first.advanced
    assert first.state == AsyncState(version=1, absorbed=1, buffered=1, buffer_weight=1.0)
    assert first.buffer_sum["w"].tolist() == [2.0, 0.0]
    w2 = 1 / math.sqrt(2)
    assert second.weight == pytest.approx(w2)
    # THEN x = [1,1] + 0.5 * ([2,0]*1 + [0,4]*w2) / (1 + w2)
    expected = [1 + 0.5 * 2 / (1 + w2), 1 + 0.5 * 4 * w2 / (1 + w2)]
    assert second.new_global["w"].tolist() == pytest.approx(expected, rel=1e-6)
    assert second.state == AsyncState(version=2, absorbed=2)
    assert second.buffer_sum is None


def test_fedbuff_by_default_divides_the_weighted_sum_by_k_as_the_paper_does():
    # GIVEN the same two updates with the default normalize "k" (Nguyen et al. 2022, Alg. 1)
    c = cfg(strategy="fedbuff", buffer_size=2, server_lr=0.5)
    _, second = _fedbuff_two_updates(c)
    # THEN x = [1,1] + 0.5 * ([2,0] + [0,4]/sqrt(2)) / 2 = [1.5, 1 + 1/sqrt(2)]
    expected = [1.5, 1 + 1 / math.sqrt(2)]
    assert second.new_global["w"].tolist() == pytest.approx(expected, rel=1e-6)


def test_fedbuff_refuses_an_unknown_normaliser_naming_the_allowed_ones():
    with pytest.raises(ConfigError, match="normalize"):
        cfg(strategy="fedbuff", strategy_options={"normalize": "mean"})


def test_fedbuff_with_k_one_and_lr_one_lands_on_the_client_model_when_fresh():
    c = cfg(strategy="fedbuff", buffer_size=1, server_lr=1.0)
    out = absorb(AsyncState(version=0), c, base_version=0, global_w=X, client_w=C, base_w=X)
    assert out.new_global["w"].tolist() == C["w"].tolist()


def test_fedbuff_needs_its_buffer_sum_when_it_has_buffered():
    c = cfg(strategy="fedbuff", buffer_size=3)
    with pytest.raises(SchemaError, match="buffer sum"):
        absorb(
            AsyncState(version=0, buffered=1, buffer_weight=1.0),
            c,
            base_version=0,
            global_w=X,
            client_w=C,
            base_w=X,
        )


def test_stop_decision():
    c = cfg(
        max_versions=5,
        heartbeat_s=30,  # below the deadline, as it must be
        deadline_s=100,
        target_metric={"name": "eval_accuracy", "threshold": 0.9},
    )
    assert stop_reason(AsyncState(version=4), c) is None
    assert stop_reason(AsyncState(version=5), c) == "max_versions"
    assert stop_reason(AsyncState(version=1), c, metric=0.91) == "target_metric"
    assert stop_reason(AsyncState(version=1), c, metric=0.89) is None
    assert stop_reason(AsyncState(version=1), c, elapsed_s=100) == "deadline"


def _dp_fedbuff(**over):
    privacy = {
        "mode": "central",
        "clip_norm": 5.0,
        "noise_multiplier": 1.0,
        "target_epsilon": 10.0,
        "delta": 1e-5,
    }
    return cfg(strategy="fedbuff", buffer_size=2, server_lr=1.0, privacy=privacy, **over)


def test_central_dp_fedbuff_buffers_clipped_deltas_and_takes_a_silo_once():
    from fedasync.core.errors import SiloInBufferError
    from fedasync.core.noise import SecureGaussian

    # GIVEN central DP FedBuff, K = 2, C = 5, at version 1; a's delta [10, -10] is 14.14 long
    c = _dp_fedbuff()
    state = AsyncState(version=1)
    base = X
    # WHEN a's update (trained on version 0: staleness 1, w = 1/sqrt 2) is absorbed
    out = absorb(state, c, base_version=0, global_w=X, client_w=C, base_w=base, client_id="a")
    # THEN the buffer holds w * clip_5([10, -10]) = (1/sqrt 2) * [3.5355, -3.5355] = [2.5, -2.5]
    assert out.new_global is None
    assert out.buffer_sum["w"].tolist() == pytest.approx([2.5, -2.5])
    assert out.state.buffer_clients == ("a",)
    assert out.state.buffer_max_weight == pytest.approx(1 / math.sqrt(2))
    # WHEN a second update of a comes before the flush THEN it is rejected with its reason
    with pytest.raises(SiloInBufferError) as exc:
        absorb(
            out.state, c, base_version=1, global_w=X, client_w=C, base_w=base,
            buffer_sum=out.buffer_sum, client_id="a",
        )  # fmt: skip
    assert exc.value.reason == "dp_silo_in_buffer"
    # WHEN b's fresh update flushes the buffer
    flushed = absorb(
        out.state, c, base_version=1, global_w=X, client_w=X, base_w=base,
        buffer_sum=out.buffer_sum, client_id="b", noise=SecureGaussian(),
    )  # fmt: skip
    # THEN a new version, the buffer and its silos cleared (noise: a statistical matter,
    # tested on the embedded stack in tests/integration/test_central_dp_fedbuff.py)
    assert flushed.new_global is not None and flushed.state.version == 2
    assert flushed.state.buffer_clients == () and flushed.state.buffered == 0


def test_without_central_dp_fedbuff_keeps_taking_a_fast_silo_twice():
    # GIVEN plain FedBuff WHEN a's two updates land in one buffer THEN both count
    c = cfg(strategy="fedbuff", buffer_size=3, server_lr=1.0)
    one = absorb(AsyncState(version=1), c, base_version=1, global_w=X, client_w=C, base_w=X,
                 client_id="a")  # fmt: skip
    two = absorb(one.state, c, base_version=1, global_w=X, client_w=C, base_w=X,
                 buffer_sum=one.buffer_sum, client_id="a")  # fmt: skip
    assert two.state.buffered == 2 and two.state.buffer_clients == ()
    assert two.buffer_sum["w"].tolist() == pytest.approx([20.0, -20.0])
