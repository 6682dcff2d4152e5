"""Runnable examples (importable from a checkout's root: `--trainer examples.keras_cnn:factory`)."""
