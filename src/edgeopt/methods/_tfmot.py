"""Lazy imports of TensorFlow Model Optimization and the legacy tf-keras it works with (the
retraining methods' optional extra, pip install 'edgeopt[tfmot]')."""

from __future__ import annotations

from typing import Any

from edgeopt._tf import import_tensorflow
from edgeopt.errors import BackendUnavailableError


def require_tfmot() -> None:
    """Refuse before any work when the optional extra is missing (pip install 'edgeopt[tfmot]')."""
    import importlib.util

    missing = [m for m in ("tf_keras", "tensorflow_model_optimization") if importlib.util.find_spec(m) is None]
    if missing:
        raise BackendUnavailableError(
            f"{missing[0]} is not installed: the retraining methods need pip install 'edgeopt[tfmot]'"
        )


def import_tfmot() -> tuple[Any, Any, Any]:
    """tensorflow, tf_keras and tensorflow_model_optimization, or a one-line error that says how to
    install them."""
    require_tfmot()
    tf = import_tensorflow()
    try:
        # tfmot sets TF_USE_LEGACY_KERAS=1 for the rest of the process (and its children): tf.keras
        # becomes tf-keras. edgeopt imports `keras` (3) directly everywhere else, which it does not affect.
        import tensorflow_model_optimization as tfmot
        import tf_keras
    except ImportError as exc:
        raise BackendUnavailableError(
            f"TF Model Optimization cannot be imported ({exc}); reinstall it: pip install -c requirements-lock.txt "
            "'edgeopt[tfmot]'"
        ) from None
    return tf, tf_keras, tfmot
