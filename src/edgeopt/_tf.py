"""Lazy, quiet imports of TensorFlow and Keras (3-5 s and ~500 MB; only train and convert need them)."""

from __future__ import annotations

import logging
import os
import sys
from types import ModuleType
from typing import Any


def import_tensorflow() -> ModuleType:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # same numerics on every run
    if "tensorflow" not in sys.modules:
        from edgeopt.quiet import captured_output

        # The `tensorflow` package (which tf-keras needs, unlike tensorflow-cpu) prints "Could not find
        # cuda drivers" through absl before TF_CPP_MIN_LOG_LEVEL applies; an import error still raises.
        with captured_output():
            import tensorflow
        # edgeopt measures and fine-tunes on the CPU, as the device runs: a GPU would change the numerics.
        tensorflow.config.set_visible_devices([], "GPU")
    import tensorflow as tf

    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    return tf


def import_keras() -> Any:
    import_tensorflow()
    import keras

    return keras
