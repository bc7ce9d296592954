"""A custom Keras layer, as teams write them: not registered with Keras, so a saved model that
uses it cannot be loaded without its code (test_sources, --custom-objects)."""

from __future__ import annotations

from edgeopt._tf import import_keras

keras = import_keras()


class Doubling(keras.layers.Layer):  # type: ignore[misc,name-defined]
    def call(self, inputs):
        return inputs * 2.0
