"""The server's application layer: handlers call it, it reads facts, asks the core, writes effects."""
