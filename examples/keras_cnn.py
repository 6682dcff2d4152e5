"""Bring your own Keras model: a small CNN on the 8x8 digits, as a trainer plugin.

    fedasync client run --task digits --client-id silo-0 --data digits:0/5 \\
        --trainer examples.keras_cnn:factory

`factory(spec, options)` is what `--trainer module:factory` calls: `spec` is the task's
model (names, shapes, dtypes of the global model this silo received; None when the
operator asks for the task's initial model), `options` the client's (`num_classes`,
`seed`, ...) and your `--trainer-option KEY=VALUE`s. Return any `Trainer`; here the
Keras wrapper around a compiled functional model. Name the layers: the tensor names on
the wire are their variable paths.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras

from client.trainers.keras_model import KerasModelTrainer
from fedasync.core.codec import ModelSpec


def build_model(num_classes: int = 10, filters: int = 16, learning_rate: float = 0.05) -> Any:
    """Digits as 8x8x1 images -> Conv2D -> pooling -> softmax."""
    images = keras.Input(shape=(8, 8, 1), name="image")
    x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name="conv")(images)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    probs = keras.layers.Dense(num_classes, activation="softmax", name="classes")(x)
    model = keras.Model(images, probs, name="digits_cnn")
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def factory(spec: ModelSpec | None, options: Mapping[str, Any]) -> KerasModelTrainer:
    keras.utils.set_random_seed(int(options.get("seed", 0)))
    model = build_model(
        num_classes=int(options.get("num_classes", 10)),
        filters=int(options.get("filters", 16)),
        learning_rate=float(options.get("learning_rate", 0.05)),
    )
    return KerasModelTrainer(model, batch_size=int(options.get("batch_size", 16)))
