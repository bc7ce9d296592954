"""A candidate's network: MobileNetV2 at its resolution with the channels it keeps, its weights
taken from the teacher (or a backbone file), behind the teacher's input.

The trunk is Keras' MobileNetV2 rebuilt layer for layer (same names, same padding), with the
number of expanded channels of each inverted residual block and of the last 1x1 conv free, so
that the teacher's weights can be sliced into it: a block's expanded channels are internal to
it (expand conv -> depthwise -> project conv), so dropping some changes no other block. Which
ones to keep is ranked on train images: a channel's mean activation after the depthwise conv
times the size of its weights in the projection (or, for the last conv, in the classifier) --
what it adds to what follows.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt._tf import import_keras
from edgeopt.errors import ModelError
from edgeopt.pixels import PixelTransform
from edgeopt.search.space import Candidate

# (output filters, stride, expansion) of MobileNetV2's blocks 0..16, as keras.applications builds them.
BLOCKS = ((16, 1, 1), (24, 2, 6), (24, 1, 6), (32, 2, 6), (32, 1, 6), (32, 1, 6), (64, 2, 6), (64, 1, 6),
          (64, 1, 6), (64, 1, 6), (96, 1, 6), (96, 1, 6), (96, 1, 6), (160, 2, 6), (160, 1, 6), (160, 1, 6),
          (320, 1, 6))
LAST_CONV = "Conv_1"

# Weights by layer name, each a list of arrays as Keras' get_weights gives them.
Weights = dict[str, list[np.ndarray]]


def make_divisible(value: float, divisor: int = 8) -> int:
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


def expanded_layers() -> list[tuple[str, str, str, str]]:
    """(expand conv, its BN, depthwise conv, its BN) and the projection of each prunable block."""
    return [(f"block_{i}_expand", f"block_{i}_expand_BN", f"block_{i}_depthwise", f"block_{i}_depthwise_BN")
            for i in range(1, len(BLOCKS))]


def build_trunk(inputs: Any, alpha: float, expanded: Mapping[str, int], last_channels: int) -> Any:
    """MobileNetV2's feature extractor on `inputs` (values in [-1, 1]); `expanded` gives each block's
    expanded channels by its expand conv's name (missing: the usual 6x)."""
    keras = import_keras()
    layers = keras.layers

    def bn(name: str) -> Any:
        return layers.BatchNormalization(epsilon=1e-3, momentum=0.999, name=name)

    x = layers.Conv2D(make_divisible(32 * alpha), 3, strides=2, padding="same", use_bias=False, name="Conv1")(inputs)
    x = layers.ReLU(6.0, name="Conv1_relu")(bn("bn_Conv1")(x))
    for block_id, (filters, stride, expansion) in enumerate(BLOCKS):
        shortcut = x
        in_channels = x.shape[-1]
        out_channels = make_divisible(int(filters * alpha))
        prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
        if block_id:
            width = expanded.get(f"{prefix}expand", expansion * in_channels)
            x = layers.Conv2D(width, 1, padding="same", use_bias=False, name=f"{prefix}expand")(x)
            x = layers.ReLU(6.0, name=f"{prefix}expand_relu")(bn(f"{prefix}expand_BN")(x))
        if stride == 2:
            side = x.shape[1]
            adjust = 1 - side % 2 if side is not None else 1
            x = layers.ZeroPadding2D(((1 - adjust, 1), (1 - adjust, 1)), name=f"{prefix}pad")(x)
        x = layers.DepthwiseConv2D(3, strides=stride, use_bias=False, padding="same" if stride == 1 else "valid",
                                   name=f"{prefix}depthwise")(x)
        x = layers.ReLU(6.0, name=f"{prefix}depthwise_relu")(bn(f"{prefix}depthwise_BN")(x))
        x = layers.Conv2D(out_channels, 1, padding="same", use_bias=False, name=f"{prefix}project")(x)
        x = bn(f"{prefix}project_BN")(x)
        if in_channels == out_channels and stride == 1:
            x = layers.Add(name=f"{prefix}add")([shortcut, x])
    x = layers.Conv2D(last_channels, 1, use_bias=False, name=LAST_CONV)(x)
    return layers.ReLU(6.0, name="out_relu")(bn("Conv_1_bn")(x))


def _all_layers(model: Any) -> list[Any]:
    found = []
    for layer in model.layers:
        found.append(layer)
        if hasattr(layer, "layers"):
            found += _all_layers(layer)
    return found


def trunk_alpha(model: Any) -> float | None:
    """The width multiplier of a MobileNetV2 teacher (from its first conv), None for another network."""
    names = {layer.name: layer for layer in _all_layers(model)}
    if not all(n in names for n in ("Conv1", "block_16_project", LAST_CONV, "probabilities")):
        return None
    first = int(names["Conv1"].get_weights()[0].shape[-1])
    for alpha in (0.35, 0.5, 0.75, 1.0, 1.3, 1.4):
        if make_divisible(32 * alpha) == first and make_divisible(int(320 * alpha)) == names["block_16_project"].get_weights()[0].shape[-1]:
            return alpha
    return None


def weights_of(model: Any) -> Weights:
    """Every layer's weights by name, nested models flattened (the teacher keeps its trunk in one)."""
    return {layer.name: [np.asarray(w) for w in layer.get_weights()] for layer in _all_layers(model) if layer.get_weights()}


def backbone_weights(path: Path, alpha: float) -> Weights:
    """A Keras MobileNetV2 no-top weights file of this alpha, by layer name."""
    keras = import_keras()
    try:
        model = keras.applications.MobileNetV2(input_shape=(224, 224, 3), alpha=alpha, include_top=False, weights=str(path))
    except Exception as exc:
        raise ModelError(f"{path} is not a MobileNetV2 alpha={alpha:g} no-top weights file ({type(exc).__name__}); pass the file "
                         "made for that width") from None
    return weights_of(model)


def rank_channels(model: Any, pixels: np.ndarray) -> dict[str, np.ndarray]:
    """For the teacher: each prunable layer's channels, most useful first (module doc), by the
    name of the conv whose output channels they are."""
    keras = import_keras()
    names = {layer.name: layer for layer in _all_layers(model)}
    trunk = next((layer for layer in model.layers if hasattr(layer, "layers") and "Conv1" in {x.name for x in layer.layers}), model)
    probes = [names[dw].name + "_relu" for _, _, dw, _ in expanded_layers()] + ["out_relu"]
    probe = keras.Model(trunk.inputs, [trunk.get_layer(n).output for n in probes])
    # A nested trunk (edgeopt train's) takes values in [-1, 1]; a flat model takes the pixels themselves.
    fed = pixels.astype(np.float32) / 127.5 - 1.0 if trunk is not model else pixels.astype(np.float32)
    outputs = probe.predict(fed, batch_size=16, verbose=0)
    ranking = {}
    for (expand, _, _, _), act in zip(expanded_layers(), outputs[:-1], strict=True):
        block = expand.removesuffix("_expand")
        out_weights = np.abs(names[f"{block}_project"].get_weights()[0][0, 0]).sum(axis=1)  # (expanded,)
        ranking[expand] = np.argsort(-(np.abs(act).mean(axis=(0, 1, 2)) * out_weights), kind="stable")
    head = np.abs(names["probabilities"].get_weights()[0]).sum(axis=1)  # (last channels,)
    ranking[LAST_CONV] = np.argsort(-(np.abs(outputs[-1]).mean(axis=(0, 1, 2)) * head), kind="stable")
    return ranking


def kept_channels(ranking: Mapping[str, np.ndarray], keep: float) -> dict[str, np.ndarray]:
    """The channels each layer keeps, in their original order (at least 8, a multiple of 8 where possible)."""
    kept = {}
    for name, order in ranking.items():
        count = min(len(order), max(8, make_divisible(len(order) * keep)))
        kept[name] = np.sort(order[:count])
    return kept


def _sliced(name: str, arrays: list[np.ndarray], kept: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """A layer's weights with the pruned channels dropped: the output channels of a kept conv,
    its BN and depthwise conv; the input channels of the conv or dense after them."""
    block = name.split("_")[0] + "_" + name.split("_")[1] if name.startswith("block_") else ""
    expand = f"{block}_expand"
    if name == expand or name in (f"{block}_expand_BN", f"{block}_depthwise_BN"):
        channels = kept.get(expand)
        return arrays if channels is None else [a[..., channels] for a in arrays]
    if name == f"{block}_depthwise":
        channels = kept.get(expand)
        return arrays if channels is None else [arrays[0][:, :, channels, :]]
    if name == f"{block}_project":
        channels = kept.get(expand)
        return arrays if channels is None else [arrays[0][:, :, channels, :]]
    if name in (LAST_CONV, "Conv_1_bn"):
        channels = kept.get(LAST_CONV)
        return arrays if channels is None else [a[..., channels] for a in arrays]
    if name == "probabilities":
        channels = kept.get(LAST_CONV)
        return arrays if channels is None else [arrays[0][channels, :], arrays[1]]
    return arrays


def build_student(candidate: Candidate, input_size: int, num_classes: int, weights: Weights,
                  kept: Mapping[str, np.ndarray], transform: PixelTransform, dropout: float = 0.2) -> Any:
    """The candidate as a Keras model taking what the teacher takes (input_size x input_size camera
    pixels under `transform`); its weights sliced from `weights` (a head too when they hold one)."""
    keras = import_keras()
    layers = keras.layers
    expanded = {name: len(channels) for name, channels in kept.items() if name != LAST_CONV}
    last = len(kept[LAST_CONV]) if LAST_CONV in kept else (make_divisible(1280 * candidate.alpha) if candidate.alpha > 1 else 1280)
    inputs = keras.Input((input_size, input_size, 3), name="pixels")
    x = inputs
    if not transform.is_identity:  # back to pixel values (in the teacher's channel order), as edgeopt's own models take
        x = layers.Normalization(axis=-1, mean=list(transform.offset), variance=[s * s for s in transform.scale],
                                 name="to_pixels")(x)
    if candidate.resolution != input_size:
        x = layers.Resizing(candidate.resolution, candidate.resolution, interpolation="bilinear", name="to_resolution")(x)
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="to_unit_range")(x)
    x = build_trunk(x, candidate.alpha, expanded, last)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name=f"edgeopt_student_{candidate.name}")
    for layer in model.layers:
        if layer.name in weights and layer.get_weights():
            arrays = _sliced(layer.name, weights[layer.name], kept)
            if layer.name == "Conv1" and candidate.init == "backbone" and transform.channel_order == "bgr":
                arrays = [arrays[0][:, :, ::-1, :]]  # the backbone's RGB filters, for the teacher's BGR input
            if [a.shape for a in arrays] != [w.shape for w in layer.get_weights()]:
                if layer.name == "probabilities":
                    continue  # another task's head: a new one is trained
                raise ModelError(f"the weights of {layer.name} do not fit candidate {candidate.name}: "
                                 f"{[a.shape for a in arrays]} vs {[w.shape for w in layer.get_weights()]}")
            layer.set_weights(arrays)
    return model
