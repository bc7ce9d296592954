"""A team's own model, optimized from every kind of file it could hand over (issue 30).

    python bench/your_model.py [--image-size 224] [--epochs 6] [--fine-tune-epochs 4] [--out bench/results]

A plain Keras script, not `edgeopt train`: it splits ../shared/data/trashnet5 80/20 per class itself
(seeded; the test photos are copied apart and handed to optimize as --test-data, never seen by the
training or the calibration), trains a MobileNetV2 classifier with its own preprocessing -- MobileNet
style, pixels mapped to -1..1 in the input pipeline, NOT inside the model, so each optimize run is told
`--input-range -1,1` -- and saves it as .keras, a SavedModel, a float .tflite (TFLiteConverter) and an
.onnx (tf2onnx, NCHW input as a PyTorch export has it). Each goes through `edgeopt optimize` in a fresh
process, timed. Writes <out>/your_model.{json,md} and judges the targets:
- every kind yields f0..f4;
- the LiteRT variants built from the .onnx (onnx2tf) are within 0.5 pp of those built from the .keras
  (paired interval, the same test photos);
- f0's mean |probability difference| between the .onnx path and the .keras path is <= 0.01.
Needs `edgeopt setup onnx2tf` for the .onnx kind's LiteRT variants (it runs it when missing).
A small setting for a quick check: --image-size 96 --epochs 1 --fine-tune-epochs 0 --per-class 40.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import provenance  # bench/, beside this script

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TRASHNET = SHARED / "data" / "trashnet5"
BACKBONE = SHARED / "weights" / "mobilenet_v2_1.0_224_no_top.weights.h5"
KINDS = {"keras": "team.keras", "savedmodel": "team_savedmodel", "tflite": "team.tflite", "onnx": "team.onnx"}
STUDY = ["f0_float32", "f1_dynamic_range", "f2_int8", "f3_int8_uint8io", "f4_float16"]
MAX_LOSS_PP = 0.5
MAX_PROB_DIFF = 0.01


def split_photos(source: Path, work: Path, seed: int, per_class: int | None) -> tuple[Path, Path]:
    """train/<class>/ and test/<class>/ under work, 80/20 per class (symlinks to the photos)."""
    rng = random.Random(seed)
    train, test = work / "train", work / "test"
    for folder in (train, test):
        shutil.rmtree(folder, ignore_errors=True)
    for cls in sorted(p for p in source.iterdir() if p.is_dir()):
        photos = sorted(p for p in cls.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        rng.shuffle(photos)
        photos = photos[:per_class] if per_class else photos
        cut = round(len(photos) * 0.2)
        for folder, part in ((test, photos[:cut]), (train, photos[cut:])):
            (folder / cls.name).mkdir(parents=True)
            for photo in part:
                (folder / cls.name / photo.name).symlink_to(photo.resolve())
    return train, test


def train_model(train_dir: Path, size: int, epochs: int, fine_tune_epochs: int, seed: int, weights: Path = BACKBONE):
    """MobileNetV2 (ImageNet weights from ../shared) with a new head; inputs -1..1 (MobileNet style)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    data = keras.utils.image_dataset_from_directory(train_dir, image_size=(size, size), batch_size=32, seed=seed,
                                                    label_mode="int")
    classes = data.class_names
    to_unit = keras.layers.Rescaling(1 / 127.5, offset=-1)  # the team's preprocessing, outside the model
    augment = keras.Sequential([keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.05)])
    data = data.map(lambda x, y: (to_unit(augment(x, training=True)), y)).prefetch(tf.data.AUTOTUNE)
    backbone = keras.applications.MobileNetV2(input_shape=(size, size, 3), include_top=False, weights=str(weights))
    backbone.trainable = False
    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.GlobalAveragePooling2D()(backbone(inputs, training=False))
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(len(classes), activation="softmax")(x)
    model = keras.Model(inputs, outputs, name="team_mobilenetv2")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(data, epochs=epochs, verbose=2)
    if fine_tune_epochs:
        backbone.trainable = True
        for layer in backbone.layers[:-40]:
            layer.trainable = False
        model.compile(optimizer=keras.optimizers.Adam(1e-5), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(data, epochs=fine_tune_epochs, verbose=2)
    return model


def save_kinds(model, folder: Path, size: int) -> dict[str, Path]:
    import tensorflow as tf
    import tf2onnx

    folder.mkdir(parents=True, exist_ok=True)
    paths = {kind: folder / name for kind, name in KINDS.items()}
    model.save(paths["keras"])
    model.export(str(paths["savedmodel"]))
    paths["tflite"].write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    fn = tf.function(lambda image: model(image, training=False))
    tf2onnx.convert.from_function(fn, input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="image")],
                                  opset=17, inputs_as_nchw=["image"], output_path=str(paths["onnx"]))
    return paths


def optimize(kind: str, model: Path, train: Path, test: Path, out: Path, extra: list[str]) -> tuple[float, int, str]:
    """One `edgeopt optimize` in a fresh process: (seconds, exit code, its last error line)."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "edgeopt", "optimize", str(model), "--data", str(train), "--test-data", str(test),
               "--out", str(out), "--input-range", "-1,1", *extra]
    if kind != "onnx":
        command += ["--backends", "litert"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    error = next((line for line in reversed(done.stderr.splitlines()) if line.startswith("error")), "")
    return seconds, done.returncode, error


def probabilities(run: Path, variant: str, test: Path) -> np.ndarray:
    from edgeopt.contract import contract_from_dict
    from edgeopt.data.imagefolder import decode_images
    from edgeopt.results import load_results
    from edgeopt.runtimes.registry import get_runtime

    results = load_results(run)
    v = results.variant(variant)
    contract = contract_from_dict(v.input.model_dump() if v.input else None)
    pixels = decode_images(Path(results.data.root), results.data.test_items,
                           (results.model.image_size, results.model.image_size), resize=contract.resize).pixels
    return get_runtime(v.backend).open(run / v.file, 2, contract.transform).predict(pixels)


def compare(keras_run: Path, onnx_run: Path, test: Path) -> dict[str, object]:
    from edgeopt.results import load_results
    from edgeopt.stats import paired_difference

    a, b = load_results(keras_run), load_results(onnx_run)
    truth = np.array([c for _, c in a.data.test_items])
    rows = {}
    for name in STUDY:
        va, vb = a.variant(name), b.variant(name)
        if va.predictions is None or vb.predictions is None or len(vb.predictions.test) != len(truth):
            rows[name] = None
            continue
        d = paired_difference(np.array(va.predictions.test) == truth, np.array(vb.predictions.test) == truth)
        rows[name] = {"difference_pp": 100 * d.difference, "low_pp": 100 * d.low, "high_pp": 100 * d.high,
                      "within": abs(100 * d.difference) <= MAX_LOSS_PP}
    diff = float(np.mean(np.abs(probabilities(keras_run, "f0_float32", test) - probabilities(onnx_run, "f0_float32", test))))
    return {"per_variant": rows, "f0_mean_abs_probability_difference": diff}


def render(record: dict) -> str:
    lines = ["# A team's own model, from every kind of file (bench/your_model.py)", "",
             f"Commit {record['commit']}, {record['created']}. MobileNetV2 (ImageNet backbone) trained by a plain Keras "
             f"script at {record['image_size']} px on {record['train_photos']} photos, preprocessing -1..1 outside the "
             f"model (optimize told `--input-range -1,1`); {record['test_photos']} held-out photos as --test-data.", "",
             "| kind | optimize s | exit | variants | f0 acc % | f2 acc % | f3 acc % | f4 acc % | selected |",
             "|---|---|---|---|---|---|---|---|---|"]
    for kind, row in record["kinds"].items():
        acc = row.get("accuracy", {})
        cells = [f"{100 * acc[n]:.2f}" if acc.get(n) is not None else "-" for n in ("f0_float32", "f2_int8", "f3_int8_uint8io",
                                                                                  "f4_float16")]
        lines.append(f"| {kind} | {row['seconds']:.1f} | {row['exit']} | {', '.join(row.get('variants', [])) or row['error']} | "
                     + " | ".join(cells) + f" | {row.get('selected', '-')} |")
    lines += ["", "## .onnx (onnx2tf) against .keras, LiteRT variants on the same photos", "",
              "| variant | Δ pp (onnx - keras) [95%] | within 0.5 pp |", "|---|---|---|"]
    for name, row in (record["onnx_vs_keras"].get("per_variant") or {}).items():
        lines.append(f"| {name} | " + (f"{row['difference_pp']:+.2f} [{row['low_pp']:+.2f}, {row['high_pp']:+.2f}] | "
                                       f"{'yes' if row['within'] else 'NO'} |" if row else "not built | NO |"))
    diff = record["onnx_vs_keras"].get("f0_mean_abs_probability_difference")
    lines += ["", f"f0's mean |probability difference| between the two paths: {diff:.5f} (target <= {MAX_PROB_DIFF})"
              if diff is not None else "f0's probability difference: not measured", "", "## Targets", ""]
    lines += [f"- {t['target']}: {'MET' if t['met'] else 'NOT MET'} ({t['detail']})" for t in record["targets"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--fine-tune-epochs", type=int, default=4)
    parser.add_argument("--per-class", type=int, default=None, help="at most this many photos per class (a quick check)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=TRASHNET)
    parser.add_argument("--weights", type=Path, default=BACKBONE, help="MobileNetV2 1.0 no-top ImageNet weights")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "cache" / "your_model")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--optimize-args", default="", help="more flags for each optimize, e.g. '--rounds 2'")
    parser.add_argument("--train-only", action="store_true",
                        help="train and save the four files into --work, then stop (a later run reuses them)")
    args = parser.parse_args()
    if not args.data.is_dir() or not args.weights.is_file():
        print(f"needs {args.data} and {args.weights}; they are on the dev/CI machine only", file=sys.stderr)
        return 2
    from edgeopt.sources.onnx2tf import find_converter, setup

    if find_converter() is None:
        setup()
    train, test = split_photos(args.data, args.work, args.seed, args.per_class)
    # The team's training does not depend on edgeopt: its four files are kept in --work and reused by a
    # run with the same settings (the stamp), so optimize can be re-measured without training again.
    stamp = {"image_size": args.image_size, "epochs": args.epochs, "fine_tune_epochs": args.fine_tune_epochs,
             "seed": args.seed, "per_class": args.per_class}
    stamp_file = args.work / "models" / "trained.json"
    kept = json.loads(stamp_file.read_text()) if stamp_file.is_file() else {}
    if kept.get("settings") == stamp:
        paths, training_s = {kind: args.work / "models" / name for kind, name in KINDS.items()}, kept["training_s"]
        print(f"reusing the model trained in {training_s:.0f} s ({stamp_file})", flush=True)
    else:
        started = time.perf_counter()
        model = train_model(train, args.image_size, args.epochs, args.fine_tune_epochs, args.seed, args.weights)
        training_s = time.perf_counter() - started
        paths = save_kinds(model, args.work / "models", args.image_size)
        stamp_file.write_text(json.dumps({"settings": stamp, "training_s": training_s}))
    if args.train_only:
        return 0
    extra = ["--threads", str(args.threads), *args.optimize_args.split()]
    kinds: dict[str, dict] = {}
    for kind, path in paths.items():
        run = args.work / f"opt-{kind}"
        seconds, code, error = optimize(kind, path, train, test, run, extra)
        row: dict = {"seconds": round(seconds, 1), "exit": code, "error": error}
        if code == 0:
            from edgeopt.results import load_results

            results = load_results(run)
            row.update(variants=[v.name for v in results.variants], selected=results.selected.name,
                       accuracy={v.name: v.test.accuracy if v.test else None for v in results.variants})
        kinds[kind] = row
        print(f"{kind}: exit {code} in {seconds:.1f} s {error}", flush=True)
    both = all(kinds[k]["exit"] == 0 for k in ("keras", "onnx"))
    onnx_vs_keras = compare(args.work / "opt-keras", args.work / "opt-onnx", test) if both else {}
    per = onnx_vs_keras.get("per_variant") or {}
    diff = onnx_vs_keras.get("f0_mean_abs_probability_difference")
    targets = [
        {"target": "every kind yields f0..f4", "met": all(set(STUDY) <= set(r.get("variants", [])) for r in kinds.values()),
         "detail": "; ".join(f"{k}: {len(set(STUDY) & set(r.get('variants', [])))}/5" for k, r in kinds.items())},
        {"target": f"LiteRT variants from .onnx within {MAX_LOSS_PP} pp of those from .keras",
         "met": bool(per) and all(r is not None and r["within"] for r in per.values()),
         "detail": ", ".join(f"{n} {r['difference_pp']:+.2f}" if r else f"{n} -" for n, r in per.items()) or "not compared"},
        {"target": f"f0 mean |probability difference| <= {MAX_PROB_DIFF}", "met": diff is not None and diff <= MAX_PROB_DIFF,
         "detail": f"{diff:.5f}" if diff is not None else "not measured"},
    ]
    record = {"commit": provenance.commit("bench/your_model.py"), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "image_size": args.image_size, "epochs": args.epochs, "fine_tune_epochs": args.fine_tune_epochs,
              "train_photos": sum(1 for _ in train.rglob("*.*")), "test_photos": sum(1 for _ in test.rglob("*.*")),
              "training_s": round(training_s, 1), "kinds": kinds, "onnx_vs_keras": onnx_vs_keras, "targets": targets}
    args.out.mkdir(parents=True, exist_ok=True)
    provenance.write_json(args.out / "your_model.json", record)
    provenance.write_text(args.out / "your_model.md", render(record))
    print(render(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
