"""A silo scores global models on a separate held-out file (`client run --eval-data`), or
on a share of its data held out (`--eval-fraction`)."""

from __future__ import annotations

import numpy as np
import pytest

from client.cli import train_and_held_out
from client.data import load_data


def _npz(path, x, y):
    np.savez(path, x=np.asarray(x, dtype=np.float32), y=np.asarray(y, dtype=np.int64))
    return str(path)


def test_a_separate_eval_file_is_the_held_out_part_and_all_of_the_data_trains(tmp_path):
    # GIVEN 6 training examples of 2 features and a separate file of 2 held-out examples
    train = load_data(_npz(tmp_path / "train.npz", np.arange(12).reshape(6, 2), [0, 1] * 3))
    held_file = _npz(tmp_path / "held.npz", [[100, 101], [102, 103]], [1, 0])
    # WHEN the silo splits them (the fraction is ignored when a file is given)
    fit, held = train_and_held_out(train, held_file, 0.5, seed=0, regression=False)
    # THEN every training example trains, and the held-out part is exactly the file's
    assert len(fit) == 6
    assert held is not None
    np.testing.assert_array_equal(held.x, [[100, 101], [102, 103]])
    np.testing.assert_array_equal(held.y, [1, 0])


def test_without_a_file_a_fraction_is_held_out(tmp_path):
    # GIVEN 10 examples of 2 classes, 5 each, and a fraction of 0.2
    x = np.arange(20).reshape(10, 2)
    data = load_data(_npz(tmp_path / "d.npz", x, [0] * 5 + [1] * 5))
    # WHEN it is split THEN 1 example per class is held out (0.2 of 5), 8 train
    fit, held = train_and_held_out(data, None, 0.2, seed=0, regression=False)
    assert held is not None
    assert (len(fit), len(held)) == (8, 2)
    assert sorted(held.y.tolist()) == [0, 1]


def test_an_eval_file_of_another_feature_shape_is_a_clear_error(tmp_path):
    # GIVEN training examples of 2 features and an evaluation file of 3
    train = load_data(_npz(tmp_path / "train.npz", np.zeros((4, 2)), [0, 1, 0, 1]))
    held_file = _npz(tmp_path / "held.npz", np.zeros((2, 3)), [0, 1])
    # WHEN they are split THEN the error names both files and both shapes
    with pytest.raises(ValueError, match=r"held\.npz.*\(3,\).*train\.npz.*\(2,\)"):
        train_and_held_out(train, held_file, 0.0, seed=0, regression=False)
