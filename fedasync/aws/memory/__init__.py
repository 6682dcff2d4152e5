"""In-memory implementations of the ports, for the server's unit tier.

Each class implements one Protocol of `fedasync.aws` (`Records`, `Objects`, `Queues`,
`Notices`, `Executions`) in the process, with no AWS and no moto, so the server's decisions can be
tested in milliseconds (tests/unit/server). They are held to the same contract as the
AWS implementations: `tests/integration/test_ports_*.py` run the contract tests against
both, the aioboto3 one on a moto server. They are our own ports' implementations, never
fakes of boto. Where DynamoDB's, S3's or Step Functions' behaviour is part of the
contract, it is kept (see each module).
"""

from fedasync.aws.memory.queues import MemoryQueues
from fedasync.aws.memory.records import MemoryRecords, MemoryTables, evaluate
from fedasync.aws.memory.services import MemoryExecutions, MemoryNotices, MemoryObjects

__all__ = [
    "MemoryExecutions",
    "MemoryNotices",
    "MemoryObjects",
    "MemoryQueues",
    "MemoryRecords",
    "MemoryTables",
    "evaluate",
]
