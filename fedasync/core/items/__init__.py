"""The server's items as typed models, each with the one codec to and from its DynamoDB item.

One module per kind: `task` (the TASK item), `round` (a ROUND#... item and its result),
`verdict` (a submission as the server knows it, `verdicts.merge`, and the VERDICT#...
attributes it writes), `ledger` (an update's entry in the event ledger), and
`expressions`, the writes' conditions built from those names. Each attribute
name is written in its module and nowhere else: the server and the operator tools read
an item through `from_item` and write one through the module's value builders, which
`Records.update_op` takes as they are. `tests/unit/test_item_literals.py` holds
`fedasync/server` and `fedasync/ops` to it.

Frozen dataclasses, not pydantic: a model keeps each value as the item holds it (what is
written back must be byte for byte what was read), the readers' fallbacks for items
written by older builds are plain code, and the stream handler builds one per item on
its hot path, where validation would cost for nothing (the record a silo wrote is
validated once, by `fedasync.core.messages.UpdateRecord`).
"""
