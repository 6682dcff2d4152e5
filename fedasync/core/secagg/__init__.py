"""Secure aggregation (Bonawitz et al. 2017), pure: the server learns only the sum.

See docs/secagg.md for the threat model, the parameters and the phases. Modules:
`quantize` (fixed-point ring), `crypto` (X25519, HKDF, AES-CTR masks, AEAD, Ed25519),
`shamir` (t-of-n sharing over GF(2^127 - 1)), `messages`, `silo` (a silo's session),
`relay` (the server's relay phases), `server` (the unmasking), `graph` (SecAgg+ neighbours), `wire` (JSON).
"""

from fedasync.core.secagg.crypto import RoundContext
from fedasync.core.secagg.errors import SecAggError
from fedasync.core.secagg.quantize import Quantizer
from fedasync.core.secagg.server import UnmaskResult, unmask
from fedasync.core.secagg.silo import SiloSession

__all__ = ["Quantizer", "RoundContext", "SecAggError", "SiloSession", "UnmaskResult", "unmask"]
