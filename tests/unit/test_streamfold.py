"""FedAvg folded range by range (fedasync.core.streamfold): the bytes of the whole fold."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from fedasync.core import codec
from fedasync.core.streamfold import RangeSum, global_layout, plan_ranges, refusal


def _model(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "b": rng.normal(size=(7,)).astype(np.float32),
        "a/kernel": rng.normal(size=(33, 5)).astype(np.float32),
        "half": rng.normal(size=(11,)).astype(np.float16),
        "brain": rng.normal(size=(9, 2)).astype(ml_dtypes.bfloat16),
        "wide": rng.normal(size=(4,)).astype(np.float64),
        "scalar": np.array(3.5, np.float32),
        "empty": np.zeros((0, 3), np.float32),
    }


def _by_hand(models: list[dict[str, np.ndarray]], ns: list[int]) -> dict[str, np.ndarray]:
    """The oracle: a float64 sum of n_i * x_i in the round's order, / sum(n), cast back."""
    out = {}
    for name, first in models[0].items():
        acc = np.zeros(first.shape, np.float64)
        for m, n in zip(models, ns, strict=True):
            acc = acc + m[name].astype(np.float64) * float(n)
        out[name] = np.asarray(acc / sum(ns)).astype(first.dtype)
    return out


def test_the_header_is_the_one_encode_writes_for_the_spec():
    # GIVEN a model of every accepted dtype, a 0-d and an empty tensor, names unsorted
    model = _model(0)
    # WHEN its header is made from its spec alone
    header, entries = global_layout(codec.spec_of(model))
    # THEN it is byte for byte the start of codec.encode's bytes, and the entries tile the rest
    blob = codec.encode(model)
    assert blob[: len(header)] == header
    assert sum(e.end - e.begin for e in entries) == len(blob) - len(header)


@pytest.mark.parametrize("chunk_bytes", [1, 8, 40, 100, 1 << 20])
def test_ranges_fold_to_the_bytes_of_the_whole_fedavg(chunk_bytes):
    # GIVEN three updates of a mixed-dtype model and their example counts
    models, ns = [_model(s) for s in (1, 2, 3)], [10, 30, 61]
    spec = codec.spec_of(models[0])
    header, entries = global_layout(spec)
    blobs = [codec.encode(m) for m in models]
    # WHEN each range is folded from every update's bytes of it and finished
    body, bad = b"", {}
    ranges = plan_ranges(entries, chunk_bytes)
    for span in ranges:
        acc = RangeSum(span)
        for blob, n in zip(blobs, ns, strict=True):
            acc.add(blob[len(header) + span.begin : len(header) + span.end], n)
        body += acc.finish(sum(ns), bad)
    # THEN the ranges tile the data, and the bytes are those of the oracle's model, encoded
    assert [r.begin for r in ranges[1:]] == [r.end for r in ranges[:-1]]
    assert header + body == codec.encode(_by_hand(models, ns))
    assert bad == {}


def test_a_range_holds_a_chunk_or_one_element_when_an_element_is_larger():
    # GIVEN float64 tensors and a chunk of 12 bytes (one and a half elements)
    _, entries = global_layout(codec.spec_of({"x": np.zeros(5, np.float64)}))
    # WHEN the data section is planned
    ranges = plan_ranges(entries, 12)
    # THEN each range holds one whole element: 8 bytes, never a cut one
    assert [(r.begin, r.end) for r in ranges] == [(0, 8), (8, 16), (16, 24), (24, 32), (32, 40)]


def test_a_non_finite_result_is_refused_naming_the_tensor_and_its_count():
    # GIVEN a range whose first update holds an Inf (a mean of finite values stays finite)
    spec = codec.spec_of({"w": np.zeros(2, np.float16)})
    _, entries = global_layout(spec)
    (span,) = plan_ranges(entries, 1 << 20)
    acc = RangeSum(span)
    acc.add(np.array([np.inf, 1], np.float16).tobytes(), 1)
    acc.add(np.array([2, 3], np.float16).tobytes(), 3)
    bad: dict[str, int] = {}
    # WHEN it is finished
    body = acc.finish(4, bad)
    # THEN the finite element is the mean ((1*1 + 3*3) / 4 = 2.5), one Inf is counted in
    # "w", and the refusal says so as check_new_global does
    assert np.frombuffer(body, np.float16)[1] == np.float16(2.5)
    assert bad == {"w": 1}
    refused = refusal(bad, spec, "round 0 of task 't': the FedAvg of its 2 accepted update(s)")
    assert refused is not None and refused.reason == "global_non_finite"
    assert "1 NaN/Inf value(s) in tensor 'w'; refused, the head stays" in refused.message
