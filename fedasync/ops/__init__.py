"""Operator tools: task control, the ledger's export and replay I/O, the report, the live
view and the demo. They run on an operator's machine, never in a Lambda (the bundle leaves
them out), and may use everything below them: the core, the AWS ports, the server and the
embedded stack; the demo also runs silos (`client/`)."""
