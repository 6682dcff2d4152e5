"""The async silo client: poller, heartbeat, trainer and streaming transfers.

What every silo runs. Importing this package never imports TensorFlow; the Keras
trainer loads it on first use.
"""
