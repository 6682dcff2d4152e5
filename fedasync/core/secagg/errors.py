"""SecAgg's errors: one class, a machine-readable `reason`, and the silo to blame.

`culprit` names the silo whose message failed a check (a forged signature, a tampered
ciphertext, a wrong share), or is None when nobody in particular is at fault (too few
survivors). The message never holds a key, a seed or a share.
"""

from __future__ import annotations

from fedasync.core.errors import FedAsyncError

# the reasons, as recorded
FORGED = "secagg_forged"  # a signature does not verify under the sender's identity key
TAMPERED = "secagg_tampered"  # an AEAD ciphertext fails authentication
BAD_SHARE = "secagg_bad_share"  # a revealed share is not the one its dealer signed
BELOW_THRESHOLD = "secagg_below_threshold"  # fewer than t silos (or shares) in a phase
REFUSED = "secagg_refused"  # a request the protocol forbids (both shares of one peer)
PROTOCOL = "secagg_protocol"  # a message out of order, for the wrong round, or malformed
OVERFLOW = "secagg_overflow"  # the ring is too small for n updates of this range


class SecAggError(FedAsyncError):
    """A secure-aggregation check failed; `culprit` is the silo at fault, if any."""

    reason = PROTOCOL

    def __init__(self, message: str, *, reason: str, culprit: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.culprit = culprit
