"""Any PyTorch `nn.Module` behind the `Trainer` interface (torch imported lazily).

The wire weights are the module's `state_dict`, names and order kept, as numpy arrays
(the codec writes them as safetensors with safetensors' numpy API: no pickle, and no
`torch.load` of bytes a silo did not make). Which entries travel:

- parameters, always;
- floating buffers (BatchNorm's `running_mean`, `running_var`) with `buffers="federate"`
  (the default): averaged by the server like parameters; with `buffers="local"` they stay
  on the silo (FedBN, Li et al. 2021: each silo keeps statistics of its own features);
- integer buffers (BatchNorm's `num_batches_tracked`, int64) never: the server accepts
  float16/32/64 only, and a batch count is this silo's own history, not a model quantity
  to average. It only matters for `BatchNorm(momentum=None)` (a cumulative mean).

`TorchTrainer(module, train_loader, optimizer_factory, loss_fn, eval_loader=None)`:
with a loader, `fit`/`evaluate` read it and ignore the arrays the client passes; without
one they batch those arrays (seeded). A fresh optimizer is made for every `fit` (momentum
and Adam moments are local to one update). Classification is recognised, not declared:
integer targets and 2-D outputs add `accuracy` to `loss`; float targets (regression)
report `loss` (what `loss_fn` computes, e.g. MSE) only.

FedProx (`proximal_mu` > 0): the loss each batch backpropagates is
`loss_fn(out, y) + mu/2 * sum ||p - p_center||^2` over the module's parameters (all of
them federated; buffers carry no gradient and integer ones never travel), `p_center` the
round's global model. The reported `loss` stays `loss_fn`'s (F_k), comparable across mu.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from client.trainers.base import TrainResult
from fedasync.core.codec import Weights
from fedasync.core.errors import IncompatibleUpdateError, SchemaError

BufferMode = Literal["federate", "local"]
BUFFER_MODES: tuple[str, ...] = ("federate", "local")
_SENT_DTYPES = ("float16", "float32", "float64")
# torch's random state is one per process; in-process silos (the demo, tests) would
# interleave their draws. One fit at a time keeps each seeded run reproducible.
_TORCH_RNG = threading.Lock()


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise ImportError("the torch trainer needs PyTorch: pip install 'fedasync[torch]'") from exc
    return torch


def federated_names(module: Any, buffers: BufferMode = "federate") -> list[str]:
    """The state_dict keys that go on the wire, in state_dict order."""
    if buffers not in BUFFER_MODES:
        raise ValueError(f"buffers must be one of {BUFFER_MODES}, got {buffers!r}")
    params = {name for name, _ in module.named_parameters()}
    names = []
    for name, tensor in module.state_dict().items():
        if name in params or (buffers == "federate" and tensor.is_floating_point()):
            _check_sendable(name, tensor)
            names.append(name)
    return names


def _check_sendable(name: str, tensor: Any) -> None:
    dtype = str(tensor.dtype).removeprefix("torch.")
    if dtype not in _SENT_DTYPES:
        raise SchemaError(
            f"tensor {name!r} has dtype {dtype}; the server accepts "
            f"{', '.join(_SENT_DTYPES)}: convert the module (e.g. module.float())"
        )


def state_to_weights(module: Any, names: Iterable[str]) -> Weights:
    """Copies of the named state_dict entries as numpy arrays (dtype kept)."""
    state = module.state_dict()
    return {name: state[name].detach().cpu().numpy().copy() for name in names}


def weights_to_state(module: Any, weights: Weights, names: list[str], who: str) -> None:
    """Copy `weights` into the module in place; names and shapes must be exactly `names`'."""
    torch = _torch()
    if list(weights) != names:
        missing = [n for n in names if n not in weights]
        extra = [n for n in weights if n not in names]
        raise IncompatibleUpdateError(
            f"{who} does not match the torch module: missing {missing}, unexpected {extra}"
            + ("" if missing or extra else "; same names in another order"),
            reason="names",
        )
    state = module.state_dict()
    with torch.no_grad():
        for name in names:
            target, value = state[name], weights[name]
            if tuple(target.shape) != tuple(value.shape):
                raise IncompatibleUpdateError(
                    f"{who} has tensor {name!r} of shape {tuple(value.shape)}; "
                    f"the torch module has {tuple(target.shape)}",
                    reason="shape",
                )
            target.copy_(torch.from_numpy(np.ascontiguousarray(value)))


class TorchTrainer:
    """Trains `module` with `optimizer_factory(module.parameters())` on `loss_fn`."""

    name = "torch"

    def __init__(
        self,
        module: Any,
        train_loader: Iterable[Any] | None = None,
        optimizer_factory: Callable[[Iterator[Any]], Any] | None = None,
        loss_fn: Callable[[Any, Any], Any] | None = None,
        eval_loader: Iterable[Any] | None = None,
        *,
        buffers: BufferMode = "federate",
        batch_size: int = 32,
    ) -> None:
        torch = _torch()
        self.module = module
        self.train_loader = train_loader
        self.eval_loader = eval_loader
        self.optimizer_factory = optimizer_factory or (
            lambda params: torch.optim.SGD(params, lr=0.1)
        )
        self.loss_fn = loss_fn or torch.nn.CrossEntropyLoss()
        self.buffers = buffers
        self.batch_size = batch_size
        self.names = federated_names(module, buffers)
        self._lock = threading.Lock()

    def weights(self) -> Weights:
        """The module's current federated weights."""
        return state_to_weights(self.module, self.names)

    def load(self, weights: Weights, who: str = "global model") -> None:
        weights_to_state(self.module, weights, self.names, who)

    def init_weights(self, seed: int) -> Weights:
        """Every submodule's `reset_parameters()` under `torch.manual_seed(seed)`."""
        torch = _torch()
        with self._lock, _TORCH_RNG:
            torch.manual_seed(seed)
            for sub in self.module.modules():
                reset = getattr(sub, "reset_parameters", None)
                if callable(reset):
                    reset()
            return self.weights()

    def fit(
        self,
        weights: Weights,
        x: npt.NDArray[Any],
        y: npt.NDArray[Any],
        *,
        epochs: int,
        seed: int,
        proximal_mu: float = 0.0,
        proximal_center: Weights | None = None,
    ) -> TrainResult:
        torch = _torch()
        with self._lock, _TORCH_RNG:
            torch.manual_seed(seed)
            self.load(weights)
            self.module.train()
            optimizer = self.optimizer_factory(self.module.parameters())
            loader = self.train_loader or self._batches(x, y, seed, shuffle=True)
            center = weights if proximal_center is None else proximal_center
            prox = self._proximal(proximal_mu, center) if proximal_mu else None
            totals: dict[str, float] = {}
            for _ in range(epochs):
                totals = self._pass(loader, optimizer, prox)
            trained = self.weights()
        count = int(totals.pop("count", 0))
        return TrainResult(trained, count, {f"train_{k}": v for k, v in totals.items()})

    def evaluate(
        self, weights: Weights, x: npt.NDArray[Any], y: npt.NDArray[Any]
    ) -> dict[str, float]:
        torch = _torch()
        with self._lock, torch.no_grad():
            self.load(weights)
            self.module.eval()
            totals = self._pass(self.eval_loader or self._batches(x, y, 0, shuffle=False), None)
        totals.pop("count", None)
        return totals

    def check_data(self, weights: Weights, x: npt.NDArray[Any], where: str) -> None:
        """Refuse data the model cannot take, before any training: one example through
        the module loaded with `weights` (the task's model)."""
        torch = _torch()
        with self._lock, torch.no_grad():
            self.load(weights, "the task's model")
            self.module.eval()
            sample = self._first_features(x)
            try:
                self.module(sample)
            except (RuntimeError, ValueError, IndexError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                raise SchemaError(
                    f"{where} has examples of shape {tuple(sample.shape[1:])}; the task's "
                    f"model does not take them: {first}",
                    reason="feature_shape",
                ) from None

    def _first_features(self, x: npt.NDArray[Any]) -> Any:
        torch = _torch()
        if self.train_loader is not None:
            for batch in self.train_loader:
                return batch[0][:1]
        return torch.from_numpy(np.ascontiguousarray(x[:1]))

    def _batches(
        self, x: npt.NDArray[Any], y: npt.NDArray[Any], seed: int, *, shuffle: bool
    ) -> Any:
        torch = _torch()
        data = torch.utils.data.TensorDataset(
            torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))
        )
        generator = torch.Generator().manual_seed(seed)
        return torch.utils.data.DataLoader(
            data, batch_size=self.batch_size, shuffle=shuffle, generator=generator
        )

    def _proximal(self, mu: float, center: Weights) -> Callable[[], Any]:
        """mu/2 * sum ||p - p_center||^2 over the parameters, as a function of now's."""
        torch = _torch()
        federated = set(self.names)
        pairs = [
            (param, torch.from_numpy(np.ascontiguousarray(center[name])).to(param))
            for name, param in self.module.named_parameters()
            if name in federated
        ]

        def term() -> Any:
            return (mu / 2.0) * sum(((p - anchor) ** 2).sum() for p, anchor in pairs)

        return term

    def _pass(
        self, loader: Iterable[Any], optimizer: Any, prox: Callable[[], Any] | None = None
    ) -> dict[str, float]:
        """One epoch (optimizer given) or one evaluation; example-weighted means of the
        loss (without the proximal term `prox`, which only the gradient sees)."""
        loss_sum, correct, count, classify = 0.0, 0, 0, True
        for xb, yb in loader:
            out = self.module(xb)
            target = _target_like(out, yb)
            loss = self.loss_fn(out, target)
            if optimizer is not None:
                optimizer.zero_grad()
                (loss if prox is None else loss + prox()).backward()
                optimizer.step()
            n = len(yb)
            loss_sum += float(loss.detach()) * n
            count += n
            classify = classify and not yb.is_floating_point() and out.ndim == 2
            if classify:
                correct += int((out.detach().argmax(dim=1) == yb).sum())
        if count == 0:
            return {"loss": 0.0, "count": 0.0}
        totals = {"loss": loss_sum / count, "count": float(count)}
        if classify:
            totals["accuracy"] = correct / count
        return totals


def _target_like(out: Any, target: Any) -> Any:
    """Regression targets of shape (n,) against outputs (n, 1): reshape, do not broadcast
    (MSELoss would silently compare every output with every target)."""
    if target.is_floating_point() and out.shape != target.shape and out.numel() == target.numel():
        return target.view_as(out).to(out.dtype)
    return target
