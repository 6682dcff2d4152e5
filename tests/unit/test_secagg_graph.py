"""SecAgg+ (Bell et al. 2020): the Harary neighbour graph, and a round over it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedasync.core.secagg import RoundContext, SecAggError
from fedasync.core.secagg.graph import harary, neighbours
from fedasync.core.secagg.quantize import Quantizer
from tests.unit.test_secagg_round import Round, oracle_ring_sum


def names(n: int) -> list[str]:
    return [f"silo-{i:02d}" for i in range(n)]


@settings(max_examples=60, deadline=None)
@given(st.integers(3, 40), st.integers(1, 12), st.binary(min_size=16, max_size=16))
def test_the_graph_is_regular_symmetric_and_loop_free(n, k, seed):
    # GIVEN n silos, a degree k and a public seed
    graph = harary(names(n), k, seed)
    # THEN no silo is its own neighbour, the relation is symmetric, and every silo has
    # degree k (k + 1 when k and n are both odd; n - 1 when k >= n - 1)
    expected = n - 1 if k >= n - 1 else k + (k % 2 and n % 2)
    for silo, peers in graph.items():
        assert silo not in peers
        assert all(silo in graph[p] for p in peers)
        assert len(peers) == expected
    # AND the same seed gives the same graph
    assert harary(list(reversed(names(n))), k, seed) == graph


def test_degree_two_is_one_cycle_through_everyone():
    # GIVEN 7 silos and k = 2  WHEN the graph is drawn
    graph = harary(names(7), 2, b"seed")
    # THEN walking from any silo along unvisited neighbours visits all 7 (one cycle)
    start = "silo-00"
    seen, here = [start], start
    while True:
        nxt = [p for p in sorted(graph[here]) if p not in seen]
        if not nxt:
            break
        here = nxt[0]
        seen.append(here)
    assert sorted(seen) == names(7)
    assert start in graph[here]


def test_another_seed_gives_another_graph_and_no_degree_is_complete():
    # GIVEN 30 silos, k = 6  THEN two seeds give two graphs (the order is pseudo-random)
    assert harary(names(30), 6, b"a" * 16) != harary(names(30), 6, b"b" * 16)
    # AND SecAgg (degree None) is the complete graph
    full = neighbours(RoundContext("t", 1, 2), names(4))
    assert full["silo-00"] == frozenset(names(4)[1:])


def test_a_secagg_plus_round_of_30_silos_with_dropouts_gives_the_exact_sum():
    # GIVEN 30 silos, each with 8 neighbours, threshold 5 per neighbourhood, b = 32
    ctx = RoundContext("digits", 4, threshold=5, degree=8, graph_seed=bytes(range(16)))
    quant = Quantizer(clip=1.0, max_silos=30)
    rng = np.random.default_rng(21)  # test data only
    data = {s: rng.normal(0, 0.3, 50).astype(np.float32) for s in names(30)}
    rnd = Round(data, ctx=ctx, quant=quant)
    # WHEN shares are dealt: each silo seals exactly 8 messages, to its neighbours
    inboxes = rnd.advertise_and_share()
    assert all(len(box) == 8 for box in inboxes.values())
    # AND 3 silos drop before their masked input and 2 after it
    rnd.mask(inboxes, drop_before={"silo-03", "silo-11", "silo-20"})
    result = rnd.close(rnd.reveal(drop_after={"silo-07", "silo-25"}))
    # THEN the sum is the 27 survivors' quantised sum, exactly (Python-int oracle)
    survivors = [s for s in names(30) if s not in {"silo-03", "silo-11", "silo-20"}]
    assert result.survivors == tuple(survivors)
    assert result.total.tolist() == oracle_ring_sum([data[s] for s in survivors], 1.0, 30, 32)


def test_a_neighbourhood_smaller_than_t_is_refused():
    # GIVEN degree 2 (3 silos per neighbourhood with the silo itself) and t = 4
    ctx = RoundContext("digits", 4, threshold=4, degree=2, graph_seed=b"s")
    rnd = Round({s: np.zeros(4) for s in names(8)}, ctx=ctx, quant=Quantizer(1.0, 8))
    # WHEN the silos deal their shares  THEN they refuse: t shares could never be found
    with pytest.raises(SecAggError, match="neighbourhood of this silo: 3 silos") as err:
        rnd.advertise_and_share()
    assert err.value.reason == "secagg_below_threshold"
