"""The strategies that ship with fedasync, registered on import (see `registry`)."""

from __future__ import annotations

from fedasync.core.strategies.fedasync import FedAsync
from fedasync.core.strategies.fedavg import FedAvg
from fedasync.core.strategies.fedbuff import FedBuff
from fedasync.core.strategies.registry import register
from fedasync.core.strategies.robust import Krum, Median, TrimmedMean

for _cls in (FedAvg, FedAsync, FedBuff, Median, TrimmedMean, Krum):
    register(_cls)
