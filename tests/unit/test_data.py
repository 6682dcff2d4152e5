"""A silo's local data: demo partitions are non-IID and seeded; files load without pickle."""

from __future__ import annotations

import numpy as np
import pytest

from client.data import (
    Dataset,
    demo_silo,
    dirichlet_partition,
    hold_out,
    load_csv,
    load_data,
    load_digits,
    load_npz,
    train_test_split,
)
from fedasync.core.errors import SchemaError


def test_digits_ship_with_the_package_scaled_to_unit_float32():
    data = load_digits()
    assert data.x.shape == (1797, 64)
    assert data.x.dtype == np.float32
    assert data.x.min() == 0.0
    assert data.x.max() == 1.0
    assert set(np.unique(data.y)) == set(range(10))


def test_held_out_split_is_stratified_disjoint_and_seeded():
    data = load_digits()
    train, test = train_test_split(data, 0.2, seed=3)
    assert len(train) + len(test) == len(data)
    for label in range(10):
        share = np.sum(test.y == label) / np.sum(data.y == label)
        assert share == pytest.approx(0.2, abs=0.01)
    again_train, _ = train_test_split(data, 0.2, seed=3)
    np.testing.assert_array_equal(train.x, again_train.x)
    other_train, _ = train_test_split(data, 0.2, seed=4)
    assert not np.array_equal(train.y, other_train.y)


def test_dirichlet_partition_covers_every_example_once_with_a_minimum_each():
    y = load_digits().y
    parts = dirichlet_partition(y, 5, 0.5, seed=0, min_examples=30)
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(len(y)))
    assert min(len(p) for p in parts) >= 30


def test_dirichlet_partition_is_deterministic_for_a_seed():
    y = load_digits().y
    first = dirichlet_partition(y, 4, 0.3, seed=11)
    second = dirichlet_partition(y, 4, 0.3, seed=11)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    other = dirichlet_partition(y, 4, 0.3, seed=12)
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_small_alpha_skews_class_mix_more_than_large_alpha():
    # GIVEN the same labels split with alpha 0.1 and alpha 100
    # THEN the low-alpha silos are far more concentrated on their top class
    y = load_digits().y

    def top_class_share(alpha: float) -> float:
        parts = dirichlet_partition(y, 5, alpha, seed=0)
        return float(np.mean([np.bincount(y[p]).max() / len(p) for p in parts]))

    assert top_class_share(0.1) > 0.4
    assert top_class_share(100.0) < 0.2


def test_impossible_minimum_is_refused_up_front():
    with pytest.raises(ValueError, match="cannot give 10 clients 50 each"):
        dirichlet_partition(np.zeros(100, dtype=np.int64), 10, 0.5, seed=0, min_examples=50)


def test_demo_silo_gives_each_client_its_share_and_the_common_test_set():
    shares = [demo_silo(i, 3, alpha=0.5, seed=1) for i in range(3)]
    assert sum(len(train) for train, _ in shares) == 1797 - len(shares[0][1])
    np.testing.assert_array_equal(shares[0][1].y, shares[2][1].y)
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        demo_silo(3, 3)


def test_npz_with_images_is_flattened(tmp_path):
    path = tmp_path / "silo.npz"
    np.savez(path, x=np.ones((6, 8, 8), dtype=np.uint8), y=np.arange(6))
    data = load_npz(path)
    assert data.x.shape == (6, 64)
    assert data.x.dtype == np.float32
    assert data.y.tolist() == [0, 1, 2, 3, 4, 5]


def test_npz_holding_object_arrays_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, x=np.array([{"a": 1}, None], dtype=object), y=np.arange(2))
    with pytest.raises(SchemaError, match="object arrays"):
        load_npz(path)


def test_npz_without_labels_names_what_is_missing(tmp_path):
    path = tmp_path / "nolabels.npz"
    np.savez(path, x=np.ones((2, 3)))
    with pytest.raises(SchemaError, match=r"lacks array\(s\) \['y'\]"):
        load_npz(path)


def test_csv_last_column_is_the_label_and_a_header_is_skipped(tmp_path):
    path = tmp_path / "silo.csv"
    path.write_text("f1,f2,label\n0.5,1.0,2\n0.0,0.25,0\n")
    data = load_csv(path)
    np.testing.assert_array_equal(data.x, np.array([[0.5, 1.0], [0.0, 0.25]], np.float32))
    assert data.y.tolist() == [2, 0]


def test_csv_with_fractional_labels_is_refused(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("0.5,1.5\n")
    with pytest.raises(SchemaError, match="not whole numbers"):
        load_csv(path)


def test_load_data_reads_paths_and_demo_specs(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("1,2,3\n")
    assert len(load_data(str(path))) == 1
    part = load_data("digits:1/5", alpha=0.5, seed=0)
    assert len(part) == len(demo_silo(1, 5, alpha=0.5, seed=0)[0])
    with pytest.raises(SchemaError, match="does not exist"):
        load_data(str(tmp_path / "missing.npz"))


def test_dataset_rejects_mismatched_lengths():
    with pytest.raises(SchemaError, match="x of shape"):
        Dataset(np.zeros((3, 2), np.float32), np.zeros(2, np.int64))


def test_a_silo_holds_out_a_seeded_share_of_each_class_for_evaluation():
    # GIVEN 10 examples of each of two classes
    data = Dataset(np.arange(20, dtype=np.float32).reshape(20, 1), np.repeat([0, 1], 10))
    # WHEN a fifth is held out
    train, held = hold_out(data, 0.2, seed=3)
    # THEN 2 of each class are held out, disjoint from the 16 trained on, the same each time
    assert held is not None
    assert (len(train), len(held)) == (16, 4)
    assert sorted(held.y.tolist()) == [0, 0, 1, 1]
    assert not set(train.x[:, 0].tolist()) & set(held.x[:, 0].tolist())
    np.testing.assert_array_equal(hold_out(data, 0.2, seed=3)[1].x, held.x)
    # AND fraction 0 holds nothing out: the data is trained on as it is
    assert hold_out(data, 0.0) == (data, None)
    # AND a dataset too small to hold an example out trains on everything
    tiny = Dataset(np.zeros((2, 1), np.float32), np.array([0, 1]))
    assert hold_out(tiny, 0.2) == (tiny, None)
