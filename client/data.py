"""A silo's local data: files it brings (`.npz`, CSV, an image folder), a torch dataset,
or a seeded demo partition of digits.

The demo partition is non-IID (`client.partitions`): by default each class is split
across clients by proportions drawn from Dirichlet(alpha) (Hsu et al. 2019); small alpha
means each silo sees few classes. Shards per class and quantity skew are the others.
Everything is deterministic for a seed, so N clients started in N processes with the
same seed and their own index agree on who holds which example without talking.

Labels are integer classes (int64, for a cross-entropy loss) or, for regression (an
`mse` loss), float32 targets of shape (n,) or (n, k).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from client.partitions import DEFAULT_SHARDS_PER_CLIENT, dirichlet_partition, partition
from fedasync.core.errors import SchemaError

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

DIGITS_CLASSES = 10
_DEMO_SPEC = re.compile(r"^digits(?::(\d+)/(\d+))?$")


@dataclass(frozen=True)
class Dataset:
    """Features (n, ...) float32 (a table (n, d), images (n, h, w, c)) and labels: (n,)
    int64 classes, or float32 regression targets (n,) / (n, k). `source` says where the
    data came from, for error messages; `classes` names the classes of an image folder."""

    x: FloatArray
    y: npt.NDArray[Any]
    source: str = "data"
    classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.x.ndim < 2 or self.y.ndim not in (1, 2) or len(self.x) != len(self.y):
            raise SchemaError(
                f"{self.source} needs x of shape (n, d) or (n, ...) and y of shape (n,); "
                f"got x {self.x.shape} and y {self.y.shape}"
            )

    def __len__(self) -> int:
        return len(self.y)

    @property
    def num_features(self) -> int:
        return int(np.prod(self.x.shape[1:]))

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """The shape of one example: (d,) for a table, (h, w, c) for images."""
        return tuple(int(d) for d in self.x.shape[1:])

    @property
    def regression(self) -> bool:
        return self.y.dtype.kind == "f"

    def subset(self, indices: npt.NDArray[np.integer[Any]]) -> Dataset:
        return replace(self, x=self.x[indices], y=self.y[indices])


__all__ = [  # dirichlet_partition lives in client.partitions now; imported from here too
    "DEFAULT_EVAL_FRACTION",
    "DIGITS_CLASSES",
    "Dataset",
    "demo_silo",
    "dirichlet_partition",
    "from_torch",
    "hold_out",
    "load_csv",
    "load_data",
    "load_digits",
    "load_npz",
    "train_test_split",
]


def load_digits() -> Dataset:
    """scikit-learn's 8x8 digits (1797 examples, ships inside the package), scaled to [0, 1]."""
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    # pixel intensities are integers 0..16
    x = (np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0)).astype(np.float32)
    return Dataset(x, np.asarray(bunch.target, dtype=np.int64))


def train_test_split(
    data: Dataset, test_fraction: float = 0.2, seed: int = 0
) -> tuple[Dataset, Dataset]:
    """Stratified held-out split: each class keeps `test_fraction` of its examples aside
    (regression targets: a seeded random `test_fraction` of the examples)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    if data.regression:  # no classes to stratify by: a seeded random share
        order = rng.permutation(len(data))
        test_idx = np.sort(order[: round(len(data) * test_fraction)])
        return data.subset(np.setdiff1d(np.arange(len(data)), test_idx)), data.subset(test_idx)
    test: list[IntArray] = []
    for label in np.unique(data.y):
        members = rng.permutation(np.flatnonzero(data.y == label))
        test.append(members[: round(len(members) * test_fraction)])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(data)), test_idx)
    return data.subset(train_idx), data.subset(test_idx)


DEFAULT_EVAL_FRACTION = 0.2


def hold_out(data: Dataset, fraction: float, seed: int = 0) -> tuple[Dataset, Dataset | None]:
    """A silo's own split: (train, held-out) with `fraction` of each class held out,
    seeded; `fraction` 0 holds nothing out. The held-out part scores the global model
    (`eval_*` metrics); too small a dataset to hold any example out gives None."""
    if fraction == 0.0:
        return data, None
    train, held = train_test_split(data, fraction, seed)
    if len(train) == 0:
        raise ValueError(
            f"--eval-fraction {fraction} of {len(data)} examples leaves none to train on"
        )
    return (train, held) if len(held) else (data, None)


def demo_silo(
    index: int,
    n_clients: int,
    *,
    alpha: float = 0.5,
    seed: int = 0,
    test_fraction: float = 0.2,
    kind: str = "dirichlet",
    shards_per_client: int = DEFAULT_SHARDS_PER_CLIENT,
) -> tuple[Dataset, Dataset]:
    """Client `index`'s share of the digits training split, and the shared held-out split.

    `kind` is the partition (`client.partitions`): `dirichlet` and `quantity` read
    `alpha`, `shards` reads `shards_per_client`."""
    if not 0 <= index < n_clients:
        raise ValueError(f"client index {index} is outside 0..{n_clients - 1}")
    train, test = train_test_split(load_digits(), test_fraction, seed)
    params: dict[str, Any] = (
        {"shards_per_client": shards_per_client} if kind == "shards" else {"alpha": alpha}
    )
    parts = partition(kind, train.y, n_clients, seed, **params)
    return train.subset(parts[index]), test


def load_npz(path: str | Path, *, regression: bool = False) -> Dataset:
    """Arrays `x` and `y` from an `.npz` (x flattened to (n, d)); object arrays (pickles)
    are refused."""
    with np.load(path, allow_pickle=False) as archive:
        missing = {"x", "y"} - set(archive.files)
        if missing:
            raise SchemaError(
                f"data file {str(path)!r} lacks array(s) {sorted(missing)}; "
                f"it has {sorted(archive.files)}"
            )
        try:
            x, y = archive["x"], archive["y"]
        except ValueError as exc:  # numpy's answer to an object array without allow_pickle
            raise SchemaError(
                f"data file {str(path)!r} holds object arrays; refused (no pickle)"
            ) from exc
    return _as_dataset(x, y, path, regression=regression)


def load_csv(path: str | Path, *, regression: bool = False) -> Dataset:
    """Numeric CSV, last column the label (or target); a non-numeric first row is taken
    as a header."""
    with open(path, newline="") as fh:
        rows = [row for row in csv.reader(fh) if row]
    if rows and not _numeric(rows[0]):
        rows = rows[1:]
    if not rows:
        raise SchemaError(f"data file {str(path)!r} has no data rows")
    try:
        table = np.array(rows, dtype=np.float64)
    except ValueError as exc:
        raise SchemaError(f"data file {str(path)!r} has a non-numeric cell: {exc}") from exc
    if table.ndim != 2 or table.shape[1] < 2:
        raise SchemaError(f"data file {str(path)!r} needs >= 2 columns of equal length")
    return _as_dataset(table[:, :-1], table[:, -1], path, regression=regression)


def _numeric(row: list[str]) -> bool:
    try:
        [float(cell) for cell in row]
    except ValueError:
        return False
    return True


def _as_dataset(
    x: npt.NDArray[Any], y: npt.NDArray[Any], path: str | Path, *, regression: bool
) -> Dataset:
    source = f"data file {str(path)!r}"
    features = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    labels = np.asarray(y)
    if regression:
        if labels.dtype.kind not in "iuf" or not np.all(np.isfinite(labels)):
            raise SchemaError(f"{source} needs finite numeric regression targets")
        return Dataset(features, labels.astype(np.float32), source)
    labels = labels.reshape(-1)
    if labels.dtype.kind == "f" and not np.all(np.isfinite(labels) & (labels == np.round(labels))):
        raise SchemaError(
            f"{source} has labels that are not whole numbers (a regression target? use --loss mse)"
        )
    if labels.dtype.kind not in "iuf" or (labels.size and labels.min() < 0):
        raise SchemaError(f"{source} needs non-negative integer labels")
    return Dataset(features, labels.astype(np.int64), source)


def from_torch(data: Iterable[Any], source: str = "torch dataset") -> Dataset:
    """A torch `Dataset` of (x, y) pairs, or a `DataLoader` of (x, y) batches, as arrays
    (read once, in order; no torch import here: tensors give `.numpy()`). Integer labels
    stay classes, float targets are regression."""
    batched = hasattr(data, "batch_size")  # a DataLoader yields batches
    xs: list[npt.NDArray[Any]] = []
    ys: list[npt.NDArray[Any]] = []
    for item in data:
        x, y = _as_numpy(item[0]), _as_numpy(item[1])
        xs.append(x if batched else x[None])
        ys.append(y if batched else y.reshape(1, *y.shape))
    if not xs:
        raise SchemaError(f"{source} holds no examples")
    x_all, y_all = np.concatenate(xs), np.concatenate(ys)
    labels = y_all.astype(np.float32) if y_all.dtype.kind == "f" else y_all.astype(np.int64)
    return Dataset(x_all.astype(np.float32), labels, source)


def _as_numpy(value: Any) -> npt.NDArray[Any]:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def load_data(spec: str, *, alpha: float = 0.5, seed: int = 0, regression: bool = False) -> Dataset:
    """`--data`: a `.npz` or `.csv` path, an image folder (one sub-folder per class), or
    `digits[:INDEX/N]` for a demo partition. `regression`: float targets (an mse loss)."""
    match = _DEMO_SPEC.match(spec)
    if match:
        if match.group(1) is None:
            return train_test_split(load_digits(), seed=seed)[0]
        return demo_silo(int(match.group(1)), int(match.group(2)), alpha=alpha, seed=seed)[0]
    path = Path(spec)
    if path.is_dir():
        if regression:
            raise SchemaError(f"image folder {spec!r} holds classes; it cannot be regression")
        from client.images import load_image_folder

        return load_image_folder(path)
    if not path.is_file():
        raise SchemaError(f"data file {spec!r} does not exist (or use 'digits:INDEX/N')")
    if path.suffix == ".npz":
        return load_npz(path, regression=regression)
    if path.suffix == ".csv":
        return load_csv(path, regression=regression)
    raise SchemaError(f"data file {spec!r} must end in .npz or .csv, or be an image folder")
