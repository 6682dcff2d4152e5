"""Server optimizers (Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2):
FedAvgM, FedAdam, FedYogi and FedAdagrad, applied to the pseudo-gradient
Delta = aggregate - global (in sync mode the round's aggregate; in FedBuff the global
plus the buffered delta, as FLSim's server optimizer consumes it).

    m_t = beta1 m_{t-1} + (1 - beta1) Delta
    adagrad: v_t = v_{t-1} + Delta^2
    adam:    v_t = beta2 v_{t-1} + (1 - beta2) Delta^2
    yogi:    v_t = v_{t-1} - (1 - beta2) Delta^2 sign(v_{t-1} - Delta^2)
    x_{t+1} = x_t + lr m_t / (sqrt(v_t) + tau)

    avgm (Hsu et al. 2019, "Measuring the Effects of Non-Identical Data Distribution"):
    m_t = beta1 m_{t-1} + Delta;  x_{t+1} = x_t + lr m_t
    (the heavy-ball form of Keras/TFF server SGD with momentum, which the paper's own code
    runs for FedAvgM; lr = 1, beta1 = 0 is FedAvg.)

Choices, where the paper leaves room or where this code differs from it:
- Moments start at m = 0 and v = v0 (default 0): the paper's analysis asks v_{-1} >= tau^2,
  its code (google-research/federated, `optimization/`) starts the accumulators at 0 as
  Flower does; set `v0` (e.g. tau**2) for the paper's condition. With v = 0 the first step
  moves each coordinate by about lr * (1 - beta1) / sqrt(1 - beta2) at most (adam/yogi).
- No bias correction, as in Algorithm 2; `bias_correction=True` divides m_t by
  (1 - beta1^t) and, for adam and yogi, v_t by (1 - beta2^t) (Kingma & Ba 2015), t = the
  step count kept in the state (1 on the first step). Adagrad's v is a sum: not corrected.
- All arithmetic in float64; the new global keeps the model's dtype, the state is float64.

Defaults (`DEFAULTS`): the hyper-parameters the paper's experiments settled on, as its code
documents them ("Hyperparameter Selection for Federated Optimization",
google-research/federated optimization/README; values there are log10):

| kind    | lr    | beta1 | beta2 | tau   | source                                              |
|---------|-------|-------|-------|-------|-----------------------------------------------------|
| avgm    | 1.0   | 0.9   | -     | -     | server SGD momentum 0.9; best server lr 10^0 on 4/6 tasks |
| adam    | 0.01  | 0.9   | 0.99  | 0.001 | best server lr 10^-2 (Shakespeare, SO NWP), 10^-2.5 (EMNIST CR); epsilon "we recommend 0.001" |
| yogi    | 0.01  | 0.9   | 0.99  | 0.001 | as adam (the same best values on every task)        |
| adagrad | 0.1   | 0.0   | -     | 0.001 | best server lr 10^-1 (CIFAR-100, EMNIST CR); no momentum (Keras Adagrad) |

beta2: the paper's code ran Keras's default 0.999; Flower's FedAdam and FedYogi default to
0.99, which we take (a shorter memory of Delta^2 suits the tens-to-hundreds of rounds of a
cross-silo task). The best values are task-dependent (CIFAR-100 wanted 10^0 for adam/yogi):
tune lr first. Flower's defaults: FedAdam eta 0.1, FedYogi eta 0.01, FedAdagrad eta 0.1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedasync.core.chunked import check_updates
from fedasync.core.codec import Array, ModelSpec, Weights
from fedasync.core.errors import ConfigError, InvalidWeightsError, SchemaError

Kind = Literal["avgm", "adam", "yogi", "adagrad"]
KINDS: tuple[str, ...] = ("avgm", "adam", "yogi", "adagrad")
MAX_LR = 10.0
STEP_KEY = "step"

_ADAPTIVE = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3, "v0": 0.0}
DEFAULTS: dict[str, dict[str, float | bool]] = {
    "avgm": {"lr": 1.0, "beta1": 0.9},
    "adam": {**_ADAPTIVE, "bias_correction": False},
    "yogi": {**_ADAPTIVE, "bias_correction": False},
    "adagrad": {"lr": 0.1, "beta1": 0.0, "tau": 1e-3, "v0": 0.0, "bias_correction": False},
}
_HYPER = ("lr", "beta1", "beta2", "tau", "v0", "bias_correction")


class ServerOptimizer(BaseModel):
    """`server_optimizer: {kind, lr, beta1, beta2, tau, v0, bias_correction}`; a field left
    out takes the kind's default (`DEFAULTS`), a field the kind does not use is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Kind
    lr: float | None = Field(default=None, gt=0.0, le=MAX_LR, allow_inf_nan=False)
    beta1: float | None = Field(default=None, ge=0.0, lt=1.0)
    beta2: float | None = Field(default=None, ge=0.0, lt=1.0)
    tau: float | None = Field(default=None, gt=0.0, le=1.0)
    v0: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)
    bias_correction: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or str(data.get("kind")) not in DEFAULTS:
            return data  # the field validators say what is wrong
        defaults = DEFAULTS[str(data["kind"])]
        unused = [k for k in _HYPER if k not in defaults and data.get(k) is not None]
        if unused:
            raise ValueError(
                f"{', '.join(unused)} not used by server optimizer {data['kind']!r} "
                f"(it takes {', '.join(defaults)})"
            )
        return {**defaults, **{k: v for k, v in data.items() if v is not None}}

    def hyper(self) -> dict[str, float | bool]:
        """The kind's complete hyper-parameters, as `server_step` takes them."""
        return {k: getattr(self, k) for k in DEFAULTS[self.kind]}

    def step(
        self,
        global_w: Mapping[str, Array],
        aggregate_w: Mapping[str, Array],
        state: OptimizerState | None,
    ) -> tuple[Weights, OptimizerState]:
        """`server_step` with this configuration."""
        return server_step(self.kind, global_w, aggregate_w, state, **self.hyper())


@dataclass(frozen=True)
class OptimizerState:
    """Moments in float64, named `m/<tensor>` (and `v/<tensor>` for the adaptive kinds),
    in the model's tensor order; `step`: how many steps were taken."""

    step: int
    tensors: dict[str, Array] = field(default_factory=dict)


def _config(kind: str, hyper: Mapping[str, Any]) -> ServerOptimizer:
    try:
        return ServerOptimizer.model_validate({"kind": kind, **hyper})
    except ValidationError as exc:
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'server_optimizer'}: {e['msg']}"
            for e in exc.errors()
        )
        raise ConfigError(f"server optimizer {kind!r}: {detail}") from exc


def _prefixes(kind: str) -> tuple[str, ...]:
    return ("m",) if kind == "avgm" else ("m", "v")


def _initial(spec: ModelSpec, kind: str, v0: float) -> OptimizerState:
    tensors = {f"m/{t.name}": np.zeros(t.shape, np.float64) for t in spec}
    if kind != "avgm":
        tensors |= {f"v/{t.name}": np.full(t.shape, v0, np.float64) for t in spec}
    return OptimizerState(step=0, tensors=tensors)


def _check_state(state: OptimizerState, spec: ModelSpec, kind: str) -> None:
    expected = {f"{p}/{t.name}": t.shape for p in _prefixes(kind) for t in spec}
    if set(state.tensors) != set(expected):
        missing = sorted(set(expected) - set(state.tensors))
        extra = sorted(set(state.tensors) - set(expected))
        raise SchemaError(
            f"server optimizer {kind!r}: the stored state does not fit the model: "
            f"missing {missing}, unexpected {extra} (another kind or another model?)"
        )
    for name, shape in expected.items():
        arr = state.tensors[name]
        if arr.shape != shape or arr.dtype != np.float64:
            raise SchemaError(
                f"server optimizer {kind!r}: state tensor {name!r} is {arr.dtype} {arr.shape}; "
                f"expected float64 {shape}"
            )
    if state.step < 0:
        raise SchemaError(f"server optimizer {kind!r}: state step {state.step} < 0")


def _second_moment(kind: str, v: Array, d2: Array, beta2: float) -> Array:
    if kind == "adagrad":
        return v + d2
    if kind == "adam":
        return beta2 * v + (1.0 - beta2) * d2
    yogi: Array = v - (1.0 - beta2) * d2 * np.sign(v - d2)
    return yogi


@dataclass(frozen=True)
class _Step:
    """One step's hyper-parameters; `t` counts from 1."""

    kind: str
    h: Mapping[str, Any]
    t: int

    def apply(self, x: Array, delta: Array, m: Array, v: Array | None) -> tuple[Array, ...]:
        """One tensor's (new x, new m[, new v]), all float64."""
        lr, beta1 = float(self.h["lr"]), float(self.h["beta1"])
        if self.kind == "avgm":
            m_new = beta1 * m + delta
            return x + lr * m_new, m_new
        assert v is not None  # _check_state made sure
        beta2 = float(self.h.get("beta2", 0.0))
        m_new = beta1 * m + (1.0 - beta1) * delta
        v_new = _second_moment(self.kind, v, delta * delta, beta2)
        m_hat, v_hat = m_new, v_new
        if self.h["bias_correction"]:
            m_hat = m_new / (1.0 - beta1**self.t)
            if self.kind != "adagrad":
                v_hat = v_new / (1.0 - beta2**self.t)
        return x + lr * m_hat / (np.sqrt(v_hat) + float(self.h["tau"])), m_new, v_new


def server_step(
    kind: str,
    global_w: Mapping[str, Array],
    aggregate_w: Mapping[str, Array],
    state: OptimizerState | None,
    **hyper: Any,
) -> tuple[Weights, OptimizerState]:
    """One server step: (new global in the model's dtype, new state). `state` is None on
    the first step; hyper-parameters left out take `DEFAULTS[kind]`. Pure: the inputs and
    the given state are not modified."""
    h = _config(kind, hyper).hyper()
    what = f"server optimizer {kind!r}"
    spec = check_updates([global_w, aggregate_w], what, labels=("the global", "the aggregate"))
    for label, weights in (("the global", global_w), ("the aggregate", aggregate_w)):
        if not all(np.isfinite(weights[t.name]).all() for t in spec):
            raise InvalidWeightsError(f"{what}: {label} has NaN/Inf", reason="non_finite")
    if state is None:
        state = _initial(spec, kind, float(h.get("v0", 0.0)))
    _check_state(state, spec, kind)
    step = _Step(kind, h, state.step + 1)
    new_global: Weights = {}
    moments: dict[str, dict[str, Array]] = {p: {} for p in _prefixes(kind)}
    for t in spec:
        x = np.asarray(global_w[t.name], dtype=np.float64)
        delta = np.asarray(aggregate_w[t.name], dtype=np.float64) - x
        m, v = state.tensors[f"m/{t.name}"], state.tensors.get(f"v/{t.name}")
        x_new, *new_moments = step.apply(x, delta, m, v)
        new_global[t.name] = x_new.astype(t.dtype)
        for prefix, moment in zip(_prefixes(kind), new_moments, strict=True):
            moments[prefix][f"{prefix}/{t.name}"] = moment
    ordered = {name: arr for part in moments.values() for name, arr in part.items()}
    return new_global, OptimizerState(step=step.t, tensors=ordered)


def state_to_tensors(state: OptimizerState) -> dict[str, Array]:
    """The state as float64 tensors for a safetensors object: `step` (a 0-d float64, exact
    below 2^53; the codec stores floats only) then the moments in their order."""
    return {STEP_KEY: np.array(float(state.step), dtype=np.float64), **state.tensors}


def state_from_tensors(tensors: Mapping[str, Array]) -> OptimizerState:
    """Inverse of `state_to_tensors`: for t = state_to_tensors(s),
    state_to_tensors(state_from_tensors(t)) has t's names, order and bytes. A malformed set
    is a SchemaError (whether it fits the model and the kind, `server_step` checks)."""
    if STEP_KEY not in tensors:
        raise SchemaError("server optimizer state has no 'step' tensor")
    raw = tensors[STEP_KEY]
    if raw.shape != () or raw.dtype != np.float64:
        raise SchemaError(
            f"server optimizer state 'step' is {raw.dtype} {raw.shape}; expected a 0-d float64"
        )
    step = float(raw)
    if not (step >= 0 and step.is_integer() and step < 2**53):
        raise SchemaError(f"server optimizer state 'step' is {step}; expected a whole number >= 0")
    moments: dict[str, Array] = {}
    for name, arr in tensors.items():
        if name == STEP_KEY:
            continue
        if name.split("/", 1)[0] not in ("m", "v") or "/" not in name:
            raise SchemaError(
                f"server optimizer state has tensor {name!r}; expected m/... or v/..."
            )
        if arr.dtype != np.float64:
            raise SchemaError(
                f"server optimizer state tensor {name!r} is {arr.dtype}; expected float64"
            )
        moments[name] = np.array(arr, dtype=np.float64, copy=True)
    return OptimizerState(step=int(step), tensors=moments)
