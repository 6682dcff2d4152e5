"""Non-IID partitions (client.partitions): shards per class, quantity skew, Dirichlet,
and the one dispatcher the demo calls. Small label arrays whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from client.data import demo_silo, load_digits, train_test_split
from client.partitions import (
    PARTITIONS,
    dirichlet_partition,
    partition,
    quantity_partition,
    shard_partition,
)


def _covers_once(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(n))
    assert all(len(p) >= 1 for p in parts)
    assert all(np.array_equal(p, np.sort(p)) for p in parts)


def test_shards_of_one_class_each_give_every_client_exactly_one_class():
    # GIVEN six examples of three classes, out of label order: class 0 at indices 1 and 4,
    # class 1 at 2 and 5, class 2 at 0 and 3
    y = np.array([2, 0, 1, 2, 0, 1], dtype=np.int64)
    # WHEN three clients get one shard each (3 shards of 2 examples, cut in label order)
    parts = shard_partition(y, 3, seed=0, shards_per_client=1)
    # THEN each client holds one whole class, and every class goes to someone
    assert {frozenset(p.tolist()) for p in parts} == {
        frozenset({1, 4}),
        frozenset({2, 5}),
        frozenset({0, 3}),
    }
    _covers_once(parts, 6)


def test_each_client_gets_shards_per_client_whole_shards_and_at_most_that_many_classes():
    # GIVEN 12 examples, 4 of each of classes 0, 1, 2 (already sorted)
    y = np.repeat(np.array([0, 1, 2], dtype=np.int64), 4)
    # WHEN 3 clients get 2 shards each: 6 shards of 2, {0,1} {2,3} (class 0), {4,5} {6,7}
    # (class 1), {8,9} {10,11} (class 2)
    shards = [frozenset({2 * i, 2 * i + 1}) for i in range(6)]
    for seed in range(5):
        parts = shard_partition(y, 3, seed=seed, shards_per_client=2)
        # THEN each client holds 4 examples, the union of exactly two of those shards
        assert [len(p) for p in parts] == [4, 4, 4]
        dealt = [[s for s in shards if s <= set(p.tolist())] for p in parts]
        assert all(len(d) == 2 for d in dealt)
        assert sorted(sorted(s) for d in dealt for s in d) == sorted(sorted(s) for s in shards)
        # AND sees at most 2 classes
        assert all(len(np.unique(y[p])) <= 2 for p in parts)
        _covers_once(parts, 12)


def test_shards_whose_sizes_do_not_divide_differ_by_at_most_one():
    # GIVEN 10 examples cut into 2 clients x 2 shards = 4 shards: sizes 3, 3, 2, 2
    y = np.zeros(10, dtype=np.int64)
    parts = shard_partition(y, 2, seed=3, shards_per_client=2)
    # THEN the clients hold 5 or 6 examples and 4 or 5, summing to 10 (two shards each)
    assert sorted(len(p) for p in parts) in ([4, 6], [5, 5])
    _covers_once(parts, 10)


def test_too_many_shards_for_the_examples_is_a_clear_error():
    # GIVEN 12 examples WHEN 3 clients ask for 5 shards each (15 shards)
    # THEN it is refused, naming the numbers and the option to lower
    with pytest.raises(ValueError, match=r"12 examples cannot be cut into 15 shards.*shards-per"):
        shard_partition(np.zeros(12, dtype=np.int64), 3, seed=0, shards_per_client=5)


def test_quantity_skew_with_a_huge_alpha_is_near_equal_and_the_sizes_are_exact():
    # GIVEN 10 examples, 3 clients, one example each guaranteed, alpha 1e6 (shares ~1/3)
    y = np.arange(10, dtype=np.int64) % 2
    parts = quantity_partition(y, 3, 1e6, seed=0)
    # THEN the 7 left are shared 2.33 each: 2, 2, 2 and the one unit lost to rounding
    # goes to one client: sizes 3, 3, 4
    assert sorted(len(p) for p in parts) == [3, 3, 4]
    _covers_once(parts, 10)


def test_quantity_skew_with_a_small_alpha_skews_sizes_but_not_labels():
    # GIVEN 2000 examples of two balanced classes split over 4 clients with alpha 0.3
    y = np.arange(2000, dtype=np.int64) % 2
    parts = quantity_partition(y, 4, 0.3, seed=1, min_examples=5)
    sizes = sorted(len(p) for p in parts)
    # THEN every client has its minimum, and the sizes are far apart
    assert sizes[0] >= 5
    assert sizes[-1] > 3 * sizes[0]
    # AND within every client big enough to tell, the classes stay near half and half
    for p in parts:
        if len(p) >= 200:
            assert abs(float(np.mean(y[p])) - 0.5) < 0.1
    _covers_once(parts, 2000)


def test_quantity_skew_refuses_more_clients_than_examples():
    with pytest.raises(ValueError, match="5 examples cannot give 6 clients 1 each"):
        quantity_partition(np.zeros(5, dtype=np.int64), 6, 1.0, seed=0)


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        ("dirichlet", {"alpha": 0.5}),
        ("shards", {"shards_per_client": 2}),
        ("quantity", {"alpha": 0.5}),
    ],
)
def test_every_kind_is_deterministic_for_a_seed_and_differs_across_seeds(kind, params):
    # GIVEN the digits training labels
    y = train_test_split(load_digits(), 0.2, seed=0)[0].y
    # WHEN split twice with seed 4 and once with seed 5
    first = partition(kind, y, 5, 4, **params)
    again = partition(kind, y, 5, 4, **params)
    other = partition(kind, y, 5, 5, **params)
    # THEN the same seed gives the same split, another seed another one
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    _covers_once(first, len(y))


def test_the_dispatcher_s_dirichlet_is_the_dirichlet_split_the_demo_always_used():
    # GIVEN digits labels WHEN split through the dispatcher and directly
    y = train_test_split(load_digits(), 0.2, seed=0)[0].y
    via = partition("dirichlet", y, 5, 0, alpha=0.5)
    direct = dirichlet_partition(y, 5, 0.5, 0)
    # THEN they are the same index arrays (the demo's bytes do not move)
    assert all(np.array_equal(a, b) for a, b in zip(via, direct, strict=True))


def test_the_dispatcher_refuses_unknown_kinds_and_another_kind_s_parameters():
    y = np.zeros(20, dtype=np.int64)
    assert PARTITIONS == ("dirichlet", "shards", "quantity")
    with pytest.raises(ValueError, match="unknown partition 'iid'; expected one of dirichlet"):
        partition("iid", y, 2, 0)
    with pytest.raises(ValueError, match="partition 'shards' takes shards_per_client; not alpha"):
        partition("shards", y, 2, 0, alpha=0.5)
    with pytest.raises(ValueError, match="partition 'quantity' needs alpha"):
        partition("quantity", y, 2, 0)


def test_demo_silo_with_shards_gives_each_silo_at_most_two_classes_of_digits():
    # GIVEN the demo's 5 silos on shards (2 per client: 10 shards of ~144 sorted examples)
    shares = [demo_silo(i, 5, seed=0, kind="shards", shards_per_client=2)[0] for i in range(5)]
    # THEN together they hold the whole training split once; each sees at most 4 classes
    # (a shard of ~144 sorted examples may straddle two classes of ~144 each)
    assert sum(len(s) for s in shares) == len(train_test_split(load_digits(), 0.2, seed=0)[0])
    assert all(len(np.unique(s.y)) <= 4 for s in shares)


def _plain(output: str) -> str:
    """The CLI's words without rich's box drawing and line wrapping."""
    return " ".join(output.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())


def test_the_demo_refuses_an_impossible_split_before_any_stack_starts(tmp_path):
    from fedasync.cli import app

    # GIVEN the demo's 1438 training examples WHEN 5 silos ask for 300 shards each
    result = CliRunner().invoke(
        app, ["demo", "--partition", "shards", "--shards-per-client", "300", "--out", str(tmp_path)]
    )
    # THEN a usage error names the numbers and the option, and nothing ran
    assert result.exit_code == 2
    assert "1438 examples cannot be cut into 1500 shards" in _plain(result.output)
    assert not (tmp_path / "events.jsonl").exists()
    # AND an unknown kind is refused by name
    bad = CliRunner().invoke(app, ["demo", "--partition", "iid", "--out", str(tmp_path)])
    assert bad.exit_code == 2
    assert "'iid' is not one of dirichlet, shards, quantity" in _plain(bad.output)
