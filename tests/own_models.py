"""A classifier built outside edgeopt's training code, as a team would make it, saved in every
kind optimize accepts: a small Keras functional CNN with its own Rescaling(1/127.5, offset=-1),
briefly trained on synthetic images; as .keras, .h5, SavedModel, float .tflite and .onnx (NCHW
input, as a PyTorch export has it)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgeopt.data.imagefolder import decode_images, scan_image_folder

SIZE = 48


def train_keras_classifier(data_dir: Path, epochs: int = 25, seed: int = 0):
    """The model and the (pixels, labels) of the whole folder it was fitted on."""
    from edgeopt._tf import import_keras, import_tensorflow

    tf = import_tensorflow()
    keras = import_keras()
    keras.utils.set_random_seed(seed)
    folder = scan_image_folder(data_dir)
    decoded = decode_images(folder.root, folder.items, (SIZE, SIZE))
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="rescale")(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(folder.classes), activation="softmax", name="probs")(x)
    model = keras.Model(inputs, outputs, name="team_cnn")
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(decoded.pixels.astype(np.float32), decoded.labels, epochs=epochs, batch_size=32, verbose=0, shuffle=True)
    del tf
    return model, decoded


def save_every_kind(model, out: Path) -> dict[str, Path]:
    """The same model as .keras, .h5, SavedModel, float .tflite (TFLiteConverter.from_keras_model)
    and .onnx (tf2onnx, NCHW input)."""
    import tf2onnx

    from edgeopt._tf import import_tensorflow
    from edgeopt.quiet import captured_output

    tf = import_tensorflow()
    out.mkdir(parents=True, exist_ok=True)
    paths = {"keras": out / "team.keras", "h5": out / "team.h5", "savedmodel": out / "team_savedmodel",
             "tflite": out / "team.tflite", "onnx": out / "team.onnx"}
    with captured_output():
        model.save(paths["keras"])
        model.save(paths["h5"])
        model.export(str(paths["savedmodel"]))
        paths["tflite"].write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
        spec = [tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32, name="image")]
        fn = tf.function(lambda image: model(image, training=False))
        tf2onnx.convert.from_function(fn, input_signature=spec, opset=17, inputs_as_nchw=["image"],
                                      output_path=str(paths["onnx"]))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return paths
