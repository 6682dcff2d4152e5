"""Thin Lambda handlers: parse the event, call `fedasync.server`, report partial failures."""
