"""What secure aggregation costs, pure (no I/O): masking at a silo, unmasking at the server.

    python bench/secagg.py [--dim 1000000] [--repeats 3] [--json PATH]

Figures, each against plain summation (the float32 sum a plain FedAvg round does):
- `mask_update_10_silos`: one silo's masked input in a round of 10 (quantise, its
  self-mask and 9 pairwise masks, AES-256-CTR, b = 32), against adding its float32
  update to a running sum;
- `unmask_5_silos`: the server's unmask phase for 5 silos, one dropped after sharing its
  keys and one after its masked input (4 survivors: 4 self-masks rebuilt and removed, one
  dropped key rebuilt and its 4 pair masks removed), against the plain sum of 4 updates;
- `unmask_50_silos`: the same for 50 silos with 5 dropped before their masked input
  (45 self-masks, 5 keys, 5 · 45 pair masks), against the plain sum of 45 updates;
- `upload_bytes_10_silos`: what one silo sends in a round of 10 (adverts, sealed shares,
  the masked input, survivor signature, unmask shares), against a float32 update;
- `mask_update_50_silos_secagg_plus_k8`, `unmask_50_silos_secagg_plus_k8`: SecAgg+ with
  8 neighbours per silo (t = 5), 5 of 50 dropped.
Every SecAgg run is checked: its ring sum must equal the survivors' quantised sum.
The silo figures are CPU time in one process; the network and the phases' deadlines
(the wiring's) are not in them.

Measured on 2026-12-01 on the shared 2-core machine (dim 1 000 000, load average 16-18
from other work, medians of 3, so rough):
  mask_update_10_silos                  0.107 s    plain 0.31 ms
  upload_bytes_10_silos                 4.004 MB   plain 4.000 MB   ratio 1.001
  unmask_5_silos                        0.146 s    plain 1.7 ms
  unmask_50_silos                       4.22 s     plain 62 ms      (Ed25519 checks: O(n^2))
  mask_update_50_silos_secagg_plus_k8   0.120 s
  unmask_50_silos_secagg_plus_k8        0.81 s     plain 18 ms
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import Figure, emit, median

from fedasync.core.secagg import RoundContext, SiloSession, UnmaskResult, unmask
from fedasync.core.secagg import server as srv
from fedasync.core.secagg.messages import MaskedInput, Unmasking
from fedasync.core.secagg.quantize import Quantizer, ring_sum


def _timed(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return median(times)


class Driver:
    """One round of n silos with updates of `dim` float32 coordinates, phase by phase."""

    def __init__(self, n: int, dim: int, threshold: int, degree: int | None = None) -> None:
        self.names = [f"silo-{i:03d}" for i in range(n)]
        self.ctx = RoundContext("bench", 1, threshold, degree, os.urandom(16))
        self.quant = Quantizer(clip=1.0, max_silos=n)
        keys = {s: Ed25519PrivateKey.generate() for s in self.names}
        self.ids = {
            s: k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) for s, k in keys.items()
        }
        rng = np.random.default_rng(0)  # bench data, not a mask
        self.updates = {s: rng.normal(0, 0.1, dim).astype(np.float32) for s in self.names}
        self.sessions = {s: SiloSession(s, keys[s], self.ctx, self.quant) for s in self.names}
        self.unmaskings: list[Unmasking] = []
        adverts = [x.advertise() for x in self.sessions.values()]
        self.roster = srv.verify_adverts(self.ctx, adverts, self.ids)
        sealed = [m for x in self.sessions.values() for m in x.share_keys(adverts, self.ids)]
        self.share_bytes = sum(len(m.ciphertext) for m in sealed) / n
        self.advert_bytes = sum(len(a.channel_pk) + len(a.mask_pk) + 64 for a in adverts) / n
        self.u2, self.inboxes = srv.route_shares(self.ctx, self.roster, sealed)

    def mask(self, name: str) -> MaskedInput:
        return self.sessions[name].masked_input(self.inboxes[name], self.updates[name])

    def run(self, drop_before: set[str], drop_after: set[str]) -> tuple[float, UnmaskResult]:
        sent = [self.mask(s) for s in sorted(self.u2 - drop_before)]
        masked = srv.masked_inputs(
            self.ctx,
            self.u2,
            messages=sent,
            quantizer=self.quant,
            length=next(iter(self.updates.values())).size,
            identities=self.ids,
        )
        u3 = frozenset(masked)
        answering = sorted(u3 - drop_after)
        sigs = [self.sessions[s].consistency(u3) for s in answering]
        unmaskings = [self.sessions[s].unmask(sigs, self.ids) for s in answering]
        self.unmaskings = unmaskings
        start = time.perf_counter()
        result = unmask(
            self.ctx,
            quantizer=self.quant,
            roster=self.roster,
            u2=self.u2,
            masked=masked,
            unmaskings=unmaskings,
            identities=self.ids,
        )
        elapsed = time.perf_counter() - start
        expected = ring_sum(
            [self.quant.quantize(self.updates[s]) for s in sorted(u3)], self.quant.mask
        )
        if not np.array_equal(result.total, expected):
            raise SystemExit("SecAgg's unmasked sum is not the survivors' quantised sum")
        return elapsed, result


def plain_sum(updates: list[np.ndarray]) -> np.ndarray:
    total = np.zeros_like(updates[0])
    for u in updates:
        total += u
    return total


def bench(dim: int, repeats: int) -> list[Figure]:
    ten = Driver(10, dim, threshold=6)
    first = ten.names[0]
    # a session masks once per round (a retry gets the same y back): time distinct silos
    t_mask = median([_timed(lambda s=s: ten.mask(s), 1) for s in ten.names[:repeats]])
    t_add = _timed(lambda: plain_sum([ten.updates[first]]), repeats)
    ten.run(set(), set())
    revealed = sum(
        len(r.share) + len(r.dealer_signature) + len(r.dealer) + len(r.kind)
        for r in ten.unmaskings[0].shares
    )
    # adverts, sealed shares, the masked input (uint32) and its signature, the survivor
    # signature, the revealed shares
    per_silo = ten.advert_bytes + ten.share_bytes + 4 * dim + 64 + 64 + revealed
    figures = [
        Figure("mask_update_10_silos", t_mask, "s", t_add, t_mask / t_add, "informative"),
        Figure(
            "upload_bytes_10_silos",
            per_silo,
            "B",
            4 * dim,
            per_silo / (4 * dim),
            "<= 1.73 (Bonawitz 2017, 2^10 users)",
        ),
    ]
    for n, before, after, t, k in ((5, 1, 1, 3, None), (50, 5, 0, 26, None), (50, 5, 0, 5, 8)):
        drv = Driver(n, dim, threshold=t, degree=k)
        label = f"unmask_{n}_silos" + (f"_secagg_plus_k{k}" if k else "")
        if k:
            t_k = median([_timed(lambda s=s, d=drv: d.mask(s), 1) for s in drv.names[:repeats]])
            figures.append(
                Figure(
                    f"mask_update_{n}_silos_secagg_plus_k{k}",
                    t_k,
                    "s",
                    t_add,
                    t_k / t_add,
                    "informative",
                )
            )
        drop_before = set(drv.names[1 : 1 + before])
        drop_after = set(drv.names[1 + before : 1 + before + after])
        t_unmask, result = drv.run(drop_before, drop_after)
        survivors = [drv.updates[s] for s in result.survivors]
        t_plain = _timed(lambda survivors=survivors: plain_sum(survivors), repeats)
        figures.append(
            Figure(
                label,
                t_unmask,
                "s",
                t_plain,
                t_unmask / t_plain,
                f"{len(result.dropped)} dropped, informative",
            )
        )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dim", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    emit(bench(args.dim, args.repeats), args.json_path)


if __name__ == "__main__":
    main()
