"""ONNX Runtime backend: export, each ORT method, .onnx input, a missing backend, diagnostics."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")

from edgeopt.cli import main  # noqa: E402
from edgeopt.config import MeasureConfig, OptimizeConfig  # noqa: E402
from edgeopt.data.imagefolder import decode_images  # noqa: E402
from edgeopt.data.split import load_split  # noqa: E402
from edgeopt.diagnose import diagnose  # noqa: E402
from edgeopt.errors import BackendUnavailableError, ConfigError, ModelError  # noqa: E402
from edgeopt.graph import describe_model  # noqa: E402
from edgeopt.methods.base import BuildContext, build_artifact  # noqa: E402
from edgeopt.methods.registry import get_method, list_methods  # noqa: E402
from edgeopt.objective import EXCLUDED_BY_GUARD  # noqa: E402
from edgeopt.pipeline import optimize  # noqa: E402
from edgeopt.runtimes import registry as runtime_registry  # noqa: E402
from edgeopt.runtimes.registry import get_runtime  # noqa: E402
from tests.conftest import TINY_OPTIMIZE, TINY_SIZE  # noqa: E402

ORT = list_methods("onnxruntime")


def _file(tiny_optimized, name):
    out, results = tiny_optimized
    return out / results.variant(name).file


@pytest.fixture(scope="module")
def test_pixels(tiny_model):
    from pathlib import Path

    split = load_split(tiny_model / "split.json")
    return decode_images(Path(split.data_root), split.test, TINY_SIZE).pixels


def test_optimize_ranks_both_runtimes_in_one_table(tiny_optimized):
    _, results = tiny_optimized
    names = [v.name for v in results.variants]
    assert ORT == ["ort_fp32", "ort_int8_static", "ort_int8_guarded", "ort_int8_dynamic", "ort_fp16"]
    built = [n for n in names if n.startswith("ort_")]
    assert built == [n for n in ORT if n in built] and {"ort_fp32", "ort_int8_static", "ort_fp16"} <= set(built)
    assert results.baseline.name == "f0_float32"
    assert {v.backend for v in results.variants} == {"litert", "onnxruntime"}
    assert sorted(results.choice.ranking) == sorted(names)
    # measured in the same table, not chosen: the default target is the baseline's runtime
    assert results.choice.target == ["litert"] and results.selected.backend == "litert"
    for name in built:  # excluded for their runtime, unless the accuracy guard excluded them first
        v = results.variant(name)
        if v.score is None:
            assert v.stopped_early
        else:
            assert not v.score.eligible
            assert v.score.excluded_because.endswith("the target runtime is litert") or v.score.guard in EXCLUDED_BY_GUARD


def test_exported_onnx_matches_the_tflite_float_model(tiny_optimized, test_pixels):
    ort_probs = get_runtime("onnxruntime").open(_file(tiny_optimized, "ort_fp32")).predict(test_pixels)
    tfl_probs = get_runtime("litert").open(_file(tiny_optimized, "f0_float32")).predict(test_pixels)
    np.testing.assert_allclose(ort_probs, tfl_probs, atol=1e-4)


@pytest.mark.parametrize(
    "name, must_have, weight_dtype",
    [
        ("ort_fp32", set(), "float32"),
        ("ort_int8_static", {"QuantizeLinear", "DequantizeLinear"}, "int8"),
        ("ort_int8_dynamic", {"ConvInteger", "DynamicQuantizeLinear"}, "int8"),
        ("ort_fp16", {"Cast"}, "float16"),
    ],
)
def test_each_ort_method_makes_the_graph_it_promises(tiny_optimized, test_pixels, name, must_have, weight_dtype):
    path = _file(tiny_optimized, name)
    g = describe_model(path)
    assert must_have <= set(g.op_counts), g.op_counts
    assert max(g.weight_dtypes, key=lambda k: g.weight_dtypes[k][1]) == weight_dtype
    assert g.inputs[0].dtype == "float32"  # QDQ and fp16 keep float I/O
    if name == "ort_fp32":
        assert not {"QuantizeLinear", "ConvInteger", "Cast"} & set(g.op_counts)
    probs = get_runtime("onnxruntime").open(path).predict(test_pixels)
    reference = get_runtime("onnxruntime").open(_file(tiny_optimized, "ort_fp32")).predict(test_pixels)
    assert np.isfinite(probs).all()
    # a broken quantizer flips most answers (the old 7-bit path lost 24 points on this model)
    assert np.mean(probs.argmax(1) == reference.argmax(1)) >= 0.85


@pytest.mark.parametrize("name, atol", [("ort_int8_dynamic", 1e-6), ("ort_int8_static", 1e-6), ("ort_fp32", 1e-5)])
def test_an_image_gets_the_answer_a_device_classifying_it_alone_gets(tiny_optimized, test_pixels, name, atol):
    # Evaluation runs images in batches; DynamicQuantizeLinear quantizes its whole input with one
    # scale, so batched, one photo's scores would depend on the photos beside it.
    session = get_runtime("onnxruntime").open(_file(tiny_optimized, name))
    batched = session.predict(test_pixels[:32])
    alone = np.concatenate([session.predict(test_pixels[i : i + 1]) for i in range(32)])
    np.testing.assert_allclose(batched, alone, rtol=0, atol=atol)  # float sums may be ordered otherwise


def test_static_quantization_records_uint8_activations_on_the_input(tiny_optimized):
    notes = describe_model(_file(tiny_optimized, "ort_int8_static")).notes
    assert notes and "input quantized inside the graph" in notes[0]


def _build_static(tiny_optimized, out, **options):
    rng = np.random.default_rng(0)
    out.mkdir(exist_ok=True)
    ctx = BuildContext(
        source=_file(tiny_optimized, "ort_fp32"),
        representative=rng.integers(0, 256, (8, *TINY_SIZE, 3), dtype=np.uint8),
        work_dir=out / "work",
        **options,
    )
    return build_artifact(get_method("ort_int8_static"), ctx, out)


def test_calibration_method_is_selectable(tiny_optimized, tmp_path):
    built = {m: _build_static(tiny_optimized, tmp_path / m, calibration_method=m) for m in ("MinMax", "Percentile", "Entropy")}
    # percentile clipping gives other activation ranges, so other bytes
    assert built["MinMax"].sha256 != built["Percentile"].sha256
    # (ORT 1.32's entropy calibrator returns the MinMax ranges on this model; it must still build)
    assert describe_model(built["Entropy"].path).op_counts["QuantizeLinear"] > 0
    with pytest.raises(ConfigError, match="MinMax, Entropy, Percentile"):
        _build_static(tiny_optimized, tmp_path / "bad", calibration_method="KL")


def test_a_calibration_cache_cut_short_by_a_dead_build_worker_is_computed_again(tiny_optimized, tmp_path):
    whole = _build_static(tiny_optimized, tmp_path / "whole")
    cache = tmp_path / "whole" / "work" / "calibration-MinMax.json"
    cut = tmp_path / "cut" / "work" / cache.name
    cut.parent.mkdir(parents=True)
    cut.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    assert _build_static(tiny_optimized, tmp_path / "cut").sha256 == whole.sha256
    assert json.loads(cut.read_bytes()) == json.loads(cache.read_bytes())


def test_reduce_range_stores_7_bit_weights(tiny_optimized, tmp_path):
    import onnx
    from onnx import numpy_helper

    def weight_range(artifact):
        graph = onnx.load(str(artifact.path)).graph
        int8 = [numpy_helper.to_array(i) for i in graph.initializer if i.data_type == onnx.TensorProto.INT8]
        return min(int(w.min()) for w in int8), max(int(w.max()) for w in int8)

    assert weight_range(_build_static(tiny_optimized, tmp_path / "full", reduce_range=False)) == (-127, 127)
    low, high = weight_range(_build_static(tiny_optimized, tmp_path / "seven", reduce_range=True))
    assert -64 <= low and high <= 64  # 7-bit symmetric, against +-127 for full 8-bit


def test_by_default_only_convs_fed_by_signed_activations_get_7_bit_weights(tiny_optimized, tmp_path):
    """Those are the convs whose int16 pair sums saturate on AVX2 without VNNI; 7 bits elsewhere
    would only cost precision."""
    import onnx
    from onnx import numpy_helper

    from edgeopt.methods.onnx import saturating_conv_weights

    built = _build_static(tiny_optimized, tmp_path / "default")
    assert built.metadata["seven_bit_weights"] > 0
    float_model = onnx.load(str(tmp_path / "default" / "work" / "preprocessed.onnx"))
    signed_fed = set(saturating_conv_weights(float_model))
    convs = [n for n in float_model.graph.node if n.op_type == "Conv"]
    assert signed_fed and len(signed_fed) < len(convs)
    stem = next(n for n in convs if n.input[0] not in {o for m in float_model.graph.node if m.op_type in ("Relu", "Clip")
                                                        for o in m.output})
    assert stem.input[1] in signed_fed  # the stem reads the (signed) rescaled pixels
    weights = {i.name.removesuffix("_quantized"): numpy_helper.to_array(i) for i in onnx.load(str(built.path)).graph.initializer
               if i.data_type == onnx.TensorProto.INT8}
    for name, w in weights.items():
        if name in signed_fed:
            assert np.abs(w.astype(int)).max() <= 64, name
    assert max(np.abs(w.astype(int)).max() for name, w in weights.items() if name not in signed_fed) == 127


def test_an_onnx_model_is_a_valid_input_without_keras(tiny_optimized, synthetic_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEOPT_ONNX2TF_ENV", str(tmp_path / "no-onnx2tf"))  # not set up: ONNX Runtime only
    onnx_model = tmp_path / "from_pytorch.onnx"
    onnx_model.write_bytes(_file(tiny_optimized, "ort_fp32").read_bytes())
    out = tmp_path / "opt"
    results = optimize(onnx_model, out, TINY_OPTIMIZE, data_dir=synthetic_dir)
    # every ONNX Runtime method, but the guarded one only when a repair is needed and found; else a note says why
    names = [v.name for v in results.variants]
    assert names == [n for n in ORT if n in names] and set(ORT) - set(names) <= {"ort_int8_guarded"}
    assert "ort_int8_guarded" in names or any(n.startswith("ort_int8_guarded: ") for n in results.notes)
    assert results.baseline.name == "ort_fp32" and results.model.kind == "onnx"
    assert results.choice.target == ["onnxruntime"]
    assert any("LiteRT variants (the study's f0..f4) were not built" in n and "'edgeopt setup onnx2tf'" in n
               for n in results.notes)
    assert results.data.split_note.startswith("drawn by edgeopt")
    assert "edgeopt setup onnx2tf" in (out / "report.md").read_text()
    assert (out / "selected.onnx").is_file() and (out / "split.json").is_file()
    labels = json.loads((out / "labels.json").read_text())["classes"]
    assert labels == sorted(p.name for p in synthetic_dir.iterdir() if p.is_dir())


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if optimize decodes an image or builds a variant."""
    from edgeopt import pipeline

    def work(*args, **kwargs):
        raise AssertionError("work started before the settings were checked")

    for name in ("decode_images_cached", "build_variants"):
        monkeypatch.setattr(pipeline, name, work)


def test_an_onnx_model_with_another_class_count_than_the_data_is_refused_before_any_work(
        tiny_optimized, synthetic_dir, tmp_path, no_work):
    import shutil

    data = tmp_path / "three"
    for name in sorted(p.name for p in synthetic_dir.iterdir() if p.is_dir())[:3]:
        shutil.copytree(synthetic_dir / name, data / name)
    model = _file(tiny_optimized, "ort_fp32")
    with pytest.raises(ModelError, match=rf"{model} outputs 5 class scores but there are 3 classes \(the sorted class folder names"):
        optimize(model, tmp_path / "o", TINY_OPTIMIZE, data_dir=data)
    assert not (tmp_path / "o").exists()


def test_a_guarded_method_without_held_out_images_is_refused_before_any_work(tiny_optimized, synthetic_dir, tmp_path,
                                                                            no_work):
    config = TINY_OPTIMIZE.replaced(representative_samples=100_000)  # every train image goes to calibration
    with pytest.raises(ConfigError, match="ort_int8_guarded cannot be built: .* lower --representative-samples"):
        optimize(_file(tiny_optimized, "ort_fp32"), tmp_path / "o", config, data_dir=synthetic_dir)


def test_an_onnx_model_needs_its_images(tiny_optimized, tmp_path):
    with pytest.raises(ConfigError, match="--data DIR"):
        optimize(_file(tiny_optimized, "ort_fp32"), tmp_path / "o", TINY_OPTIMIZE)


def test_without_onnxruntime_everything_else_works_and_the_report_says_so(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(runtime_registry.RUNTIMES["onnxruntime"], "available", lambda: False)
    config = OptimizeConfig(representative_samples=10, measure=MeasureConfig(rounds=1, invocations=2, warmup=1))
    results = optimize(tiny_model, tmp_path / "o", config)
    assert {v.backend for v in results.variants} == {"litert"}
    assert any("onnxruntime is not installed" in n and "edgeopt[onnx]" in n for n in results.notes)
    with pytest.raises(BackendUnavailableError, match=r"pip install 'edgeopt\[onnx\]'"):
        optimize(tiny_model, tmp_path / "o2", OptimizeConfig(backends=("onnxruntime",)))


def _slowed(results, name, factor, machine=None):
    """The same graphs, with `name` made `factor` times slower than its float baseline."""
    base = "f0_float32" if results.variant(name).backend == "litert" else "ort_fp32"
    slow = results.variant(base).latency.median_ms * factor
    variants = [v.model_copy(update={"latency": v.latency.model_copy(update={"median_ms": slow})}) if v.name == name else v
                for v in results.variants]
    return results.model_copy(update={"variants": variants, "machine": {**results.machine, **(machine or {})}})


def test_diagnostics_stay_silent_about_variants_that_are_fast(tiny_optimized):
    _, results = tiny_optimized
    fast = _slowed(results, "f1_dynamic_range", 0.5)  # twice as fast as f0
    assert not any(d.startswith("f1_dynamic_range") for d in diagnose(fast))


def test_diagnostics_explain_a_slow_dynamic_range_variant_from_its_graph(tiny_optimized):
    _, results = tiny_optimized
    hybrid = results.variant("f1_dynamic_range").graph.hybrid_ops
    assert hybrid > 0
    text = " ".join(diagnose(_slowed(results, "f1_dynamic_range", 1.8)))
    assert "f1_dynamic_range runs at 0.56x the speed of f0_float32" in text
    assert f"{hybrid} of its ops are hybrid" in text and "XNNPACK does not take hybrid ops" in text


def test_diagnostics_explain_ort_dynamic_and_float16_slowness(tiny_optimized):
    _, results = tiny_optimized
    dynamic = " ".join(diagnose(_slowed(results, "ort_int8_dynamic", 3.0)))
    assert "ConvInteger" in dynamic and "DynamicQuantizeLinear" in dynamic
    fp16 = " ".join(diagnose(_slowed(results, "ort_fp16", 1.5, {"machine": "x86_64", "speed_flags": ["avx2", "fma"]})))
    assert "Cast nodes" in fp16 and "float16 only halves the file" in fp16 and "x86 without AVX512-FP16" in fp16
    arm = " ".join(diagnose(_slowed(results, "ort_fp16", 1.5, {"machine": "aarch64", "speed_flags": ["asimd"]})))
    assert "no fast float16 path" in arm and "x86" not in arm
    # a CPU that has the instructions is not said to lack them
    fp16 = " ".join(diagnose(_slowed(results, "ort_fp16", 1.5, {"speed_flags": ["avx2", "avx512_fp16"]})))
    assert "although this CPU has AVX512-FP16" in fp16 and "without AVX512-FP16" not in fp16


def test_diagnostics_name_the_missing_int8_instructions(tiny_optimized):
    _, results = tiny_optimized
    no_vnni = _slowed(results, "f2_int8", 1.0, {"int8_dot_product": []})
    assert any("no int8 dot-product instructions" in d for d in diagnose(no_vnni))
    with_vnni = _slowed(results, "f2_int8", 1.0, {"int8_dot_product": ["avx512_vnni"]})
    assert not any("no int8 dot-product" in d for d in diagnose(with_vnni))


def test_inspect_and_classify_accept_onnx(capsys, tiny_optimized, synthetic_dir):
    path = _file(tiny_optimized, "ort_int8_static")
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "(onnx," in out and "QuantizeLinear" in out
    image = sorted((synthetic_dir / "tin_can").glob("*.jpg"))[0]
    assert main(["classify", str(path), str(image), "--top-k", "1"]) == 0
    assert capsys.readouterr().out.split(": ")[1].split()[0] in json.loads(
        (path.parents[1] / "labels.json").read_text()
    )["classes"]


def test_a_guarded_method_runs_its_held_out_images_as_the_evaluation_does(tiny_optimized, tiny_model):
    # an .onnx model that takes normalised pixels (--input-range, --input-mean/--input-std): the
    # repair's held-out answers must come from the same input as its test accuracy, not raw pixels
    from pathlib import Path

    from edgeopt.methods import repair
    from edgeopt.pixels import PixelTransform

    split = load_split(tiny_model / "split.json")
    pixels = decode_images(Path(split.data_root), split.validation, TINY_SIZE).pixels
    transform = PixelTransform.from_range(-1, 1)
    ctx = BuildContext(source=tiny_model, representative=pixels[:1], holdout=pixels,
                       holdout_labels=np.zeros(len(pixels), int), pixel_transform=transform)
    path = _file(tiny_optimized, "ort_fp32")
    session = get_runtime("onnxruntime")
    as_evaluated = session.open(path, 1, transform).predict(pixels).argmax(axis=1)
    assert not np.array_equal(as_evaluated, session.open(path, 1).predict(pixels).argmax(axis=1))  # it matters here
    np.testing.assert_array_equal(repair.held_out_answers(path, repair.held_out(ctx, "onnxruntime")), as_evaluated)
