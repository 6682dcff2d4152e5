"""Local differential privacy: the silo clips and noises its own update before upload.

When the task's notice says `privacy.mode: local`, what leaves the silo is

    x_global + clip_C(x_local - x_global) + N(0, (z·C)²·I)

the noise drawn from a fresh `SecureGaussian` (ChaCha20 keyed by `os.urandom`) per
update, so the server never sees an unnoised model. The silo keeps its own count of
releases and its own ε (at the task's δ, the task's accountant) and reports ε on each
update record (`local_epsilon`). It enforces the budget itself: before a release that
would take its ε past `target_epsilon` it stops with `PrivacyBudgetExhaustedError`,
having trained nothing more and uploaded nothing. Every noised model counts as a
release when it is made, uploaded or not (a crash before the upload, then a retry with
new noise, spends twice: counted twice).

The silo trusts the first privacy configuration it sees for a task and refuses any
other one later (a server cannot lower the noise half way through). The count is kept
in `{work_dir}/privacy-{task}-{client}.json` when the run has a `work_dir`, so a
restarted silo goes on from where it stopped; without one it lives in memory for the
run, and a warning says so. The unclipped norm of the delta is never logged or kept.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from fedasync.core.clipping import clip_update
from fedasync.core.codec import Array, Weights
from fedasync.core.errors import ConfigError, FedAsyncError
from fedasync.core.noise import SecureGaussian, add_noise
from fedasync.core.privacy import PrivacyConfig, noise_std

if TYPE_CHECKING:
    from client.state import RunState
    from fedasync.core.messages import GlobalModelNotice

log = structlog.get_logger()


class PrivacyBudgetExhaustedError(FedAsyncError):
    """One more release would take the silo's epsilon past the task's target."""

    reason = "privacy_budget"


class LocalPrivacy:
    """One silo's local DP for one task: clip, noise, count, account."""

    def __init__(
        self,
        cfg: PrivacyConfig,
        *,
        task_name: str,
        state_path: Path | None = None,
        rng_factory: Callable[[], SecureGaussian] = SecureGaussian,
    ) -> None:
        if cfg.mode != "local":
            raise ValueError(f"LocalPrivacy is for mode 'local', not {cfg.mode!r}")
        self.cfg = cfg
        self.task_name = task_name
        self._path = state_path
        self._rng_factory = rng_factory
        self.releases = self._load()

    def _load(self) -> int:
        if self._path is None or not self._path.exists():
            return 0
        try:
            saved = json.loads(self._path.read_text(encoding="utf-8"))
            releases = int(saved["releases"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # a count the silo cannot read is not taken for 0: that would reset its budget
            raise ConfigError(
                f"task {self.task_name!r}: the silo's release count {self._path} cannot be "
                f"read ({exc}); restore it, or delete it only if no update was released",
                reason="privacy_state",
            ) from exc
        if saved.get("privacy") != self.cfg.model_dump():
            raise ConfigError(
                f"task {self.task_name!r}: the privacy configuration changed since this "
                f"silo last released an update ({self._path} holds {saved.get('privacy')}, "
                f"the notice says {self.cfg.model_dump()}); the silo keeps to the first one",
                reason="privacy_changed",
            )
        return releases

    def _save(self) -> None:
        if self._path is None:
            return
        temporary = self._path.with_suffix(".tmp")
        body = {"task_name": self.task_name, "privacy": self.cfg.model_dump()}
        temporary.write_text(json.dumps({**body, "releases": self.releases}), encoding="utf-8")
        os.replace(temporary, self._path)  # never half written

    @property
    def epsilon(self) -> float:
        """ε the silo has spent on this task so far."""
        return self.cfg.epsilon_after(self.releases)

    def check_same(self, cfg: PrivacyConfig | None) -> None:
        """A notice's privacy configuration must be the one the silo started with."""
        if cfg != self.cfg:
            now = cfg.model_dump() if cfg is not None else "no privacy"
            raise ConfigError(
                f"task {self.task_name!r}: a notice changes the privacy configuration from "
                f"{self.cfg.model_dump()} to {now}; the silo keeps to the first one and "
                "stops (its epsilon is accounted under that one)",
                reason="privacy_changed",
            )

    def check_examples(self, num_examples: int) -> None:
        """δ must be below 1/n for the silo's own n examples (what local DP protects)."""
        if self.cfg.delta * num_examples >= 1:
            raise ConfigError(
                f"task {self.task_name!r}: privacy.delta {self.cfg.delta:g} is not below 1 "
                f"over this silo's {num_examples} examples; the silo will not release at it",
                reason="privacy_delta",
            )

    def privatize(self, local: Mapping[str, Array], global_w: Mapping[str, Array]) -> Weights:
        """The model to upload: the global plus the clipped, noised delta, in local dtypes."""
        if not self.cfg.allows_release(self.releases):
            raise PrivacyBudgetExhaustedError(
                f"task {self.task_name!r}: {self.releases} release(s) have spent epsilon "
                f"{self.epsilon:.4g}; one more would pass target_epsilon "
                f"{self.cfg.target_epsilon:g} at delta {self.cfg.delta:g}. The silo stops "
                "sending updates for this task",
            )
        base = {name: np.asarray(global_w[name], dtype=np.float64) for name in local}
        delta = {
            name: np.asarray(arr, dtype=np.float64) - base[name] for name, arr in local.items()
        }
        clipped, _ = clip_update(delta, self.cfg.clip_norm)  # the norm before: not kept
        del delta
        noised = add_noise(
            clipped, noise_std(self.cfg.clip_norm, self.cfg.noise_multiplier), self._rng_factory()
        )
        self.releases += 1
        self._save()
        return {name: (base[name] + noised[name]).astype(local[name].dtype) for name in local}

    def describe(self) -> dict[str, Any]:
        """What may be logged: the configuration and the count, never noise or norms."""
        return {"releases": self.releases, "local_epsilon": self.epsilon, **self.cfg.model_dump()}


def state_path(
    work_dir: Path | None, task_name: str, client_id: str, incarnation: str | None = None
) -> Path | None:
    """Where the silo keeps its release count, or None (memory only). One file per
    creation of the task (`incarnation`): a task created again is a new budget."""
    if work_dir is None:
        return None
    work_dir.mkdir(parents=True, exist_ok=True)
    suffix = f"-{incarnation}" if incarnation else ""
    return work_dir / f"privacy-{task_name}-{client_id}{suffix}.json"


async def local_dp(
    state: RunState, notice: GlobalModelNotice, global_w: Weights, trained: Weights, n: int
) -> tuple[Weights, float | None]:
    """The model to upload and the silo's epsilon: clipped and noised with
    `privacy.mode: local`, else as trained (and None)."""
    cfg = notice.privacy
    if cfg is None or cfg.mode != "local":
        if state.privacy is not None:  # local DP began: no notice switches it off
            state.privacy.check_same(cfg)
        return trained, None
    if state.privacy is None:
        where = state_path(state.cfg.work_dir, state.cfg.task_name, state.cfg.client_id,
                           notice.incarnation)  # fmt: skip
        state.privacy = LocalPrivacy(cfg, task_name=state.cfg.task_name, state_path=where)
        if where is None:
            log.warning("client.privacy_count_in_memory",
                        reason="no work_dir: a restarted silo counts its releases from 0")  # fmt: skip
    privacy = state.privacy
    privacy.check_same(cfg)
    privacy.check_examples(n)
    try:
        noised = await state.in_compute(privacy.privatize, trained, global_w)
    except PrivacyBudgetExhaustedError as exc:
        log.warning("client.privacy_budget_exhausted", reason=exc.message, **privacy.describe())
        raise
    log.info("client.privacy_release", **privacy.describe())
    return noised, privacy.epsilon
