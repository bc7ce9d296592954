"""The command line: a user's mistake is one line on stderr, exit 2, no traceback, nothing written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgeopt.cli import main
from tests.conftest import CORAL, needs, write_image


def run(capsys, *args):
    code = main(list(map(str, args)))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, fragment):
    assert code == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0]


def test_missing_data_folder(capsys, tmp_path):
    code, _, err = run(capsys, "train", tmp_path / "nope", "--out", tmp_path / "m")
    assert_one_line_error(code, err, "does not exist")
    assert not (tmp_path / "m").exists()


def test_empty_data_folder(capsys, tmp_path):
    (tmp_path / "data").mkdir()
    code, _, err = run(capsys, "train", tmp_path / "data", "--out", tmp_path / "m")
    assert_one_line_error(code, err, "found no class folders")


def test_class_folder_without_images(capsys, tmp_path):
    write_image(tmp_path / "data" / "cans" / "a.jpg")
    (tmp_path / "data" / "bottles").mkdir()
    code, _, err = run(capsys, "train", tmp_path / "data", "--out", tmp_path / "m")
    assert_one_line_error(code, err, "bottles")


def test_existing_output_is_refused_before_any_work(capsys, tmp_path, synthetic_dir):
    (tmp_path / "m").mkdir()
    code, _, err = run(capsys, "train", synthetic_dir, "--out", tmp_path / "m")
    assert_one_line_error(code, err, "--force")


def test_weights_file_that_does_not_exist(capsys, tmp_path, synthetic_dir):
    code, _, err = run(capsys, "train", synthetic_dir, "--out", tmp_path / "m", "--weights", tmp_path / "w.h5",
                       "--image-size", "32", "--epochs-head", "1")
    assert_one_line_error(code, err, "weights file")
    assert not (tmp_path / "m").exists()


def test_optimize_on_something_that_is_not_a_model_folder(capsys, tmp_path):
    code, _, err = run(capsys, "optimize", tmp_path, "--out", tmp_path / "o")
    assert_one_line_error(code, err, "written by 'edgeopt train'")


def test_inspect_and_classify_refuse_files_that_are_not_models(capsys, tmp_path):
    jpg = write_image(tmp_path / "photo.jpg")
    code, _, err = run(capsys, "inspect", jpg)
    assert_one_line_error(code, err, "not a model edgeopt can run")
    fake = tmp_path / "m.tflite"
    fake.write_text("definitely not a flatbuffer")
    code, _, err = run(capsys, "classify", fake, jpg)
    assert_one_line_error(code, err, "not a valid .tflite")
    code, _, err = run(capsys, "inspect", tmp_path)
    assert_one_line_error(code, err, "is a folder; pass a model file")


def test_classify_with_zero_threads_blames_the_threads_not_the_model(capsys, tiny_optimized, synthetic_dir):
    out, _ = tiny_optimized
    image = sorted((synthetic_dir / "carton").glob("*.jpg"))[0]
    code, _, err = run(capsys, "classify", out / "variants" / "f0_float32.tflite", image, "--threads", "0")
    assert code == 2 and "--threads" in err and "not a valid" not in err
    from edgeopt.classify import classify
    from edgeopt.errors import ConfigError

    with pytest.raises(ConfigError, match="--threads 0 must be >= 1"):
        classify(out / "variants" / "f0_float32.tflite", [image], threads=0)


def test_classify_reports_a_decompression_bomb_in_one_line(capsys, tiny_optimized, tmp_path):
    from tests.test_images import png_bytes

    out, _ = tiny_optimized
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bytes(14000, 14000, 8, 0, b"\x00" * 64))
    code, _, err = run(capsys, "classify", out / "variants" / "f0_float32.tflite", bomb)
    assert_one_line_error(code, err, "bomb.png")


def test_bad_option_values_are_errors_not_tracebacks(capsys, tmp_path):
    code, _, err = run(capsys, "optimize", tmp_path, "--out", tmp_path / "o", "--objective", "fastest")
    assert_one_line_error(code, err, "--objective fastest: Input should be 'default' or 'paper'")
    cfg = tmp_path / "c.toml"
    cfg.write_text("[optimize]\nrepresentative_sample = 5\n")
    code, _, err = run(capsys, "optimize", tmp_path, "--out", tmp_path / "o", "--config", cfg)
    assert_one_line_error(code, err, f"{cfg} [optimize] representative_sample: unknown key; known keys: ")


@pytest.mark.parametrize("text, fragment", [
    ("[optimize.measure]\nthreads = 2.5\n", "[optimize] measure.threads: Input should be a valid integer (got 2.5)"),
    ('[optimize.measure]\ntrain_images = "some"\n', "[optimize] measure.train_images: Input should be a valid integer"),
    ('[optimize]\nstrict = "no"\n', "[optimize] strict: Input should be a valid boolean"),
    ("[optimize]\nmeasure = 5\n", "[optimize] measure: Input should be a valid dictionary"),
    ('[optimize]\nrepresentative_samples = "many"\n', "[optimize] representative_samples: Input should be a valid integer"),
    ("[optimize.objective]\nweight_size = -1\n", "[optimize] objective.weight_size: Input should be greater than or equal to 0"),
    ("[trian]\nepochs_head = 3\n", "unknown key"),
])
def test_config_values_are_typed_and_every_error_names_the_key_and_the_file(capsys, tmp_path, text, fragment):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    code, _, err = run(capsys, "optimize", tmp_path / "nowhere", "--out", tmp_path / "o", "--config", cfg)
    assert_one_line_error(code, err, fragment)
    assert str(cfg) in err


def test_a_json_config_must_be_an_object_and_a_folder_is_not_a_config(capsys, tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text("[1, 2]")
    code, _, err = run(capsys, "optimize", tmp_path, "--out", tmp_path / "o", "--config", cfg)
    assert_one_line_error(code, err, "holds a JSON list, not an object of settings")
    code, _, err = run(capsys, "train", tmp_path, "--out", tmp_path / "m", "--config", tmp_path)
    assert_one_line_error(code, err, "is a folder; pass a TOML or JSON file")


def test_a_flag_overrides_the_file_and_a_bad_flag_is_named_as_a_flag(capsys, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[optimize.measure]\nrounds = 7\n")
    code, _, err = run(capsys, "optimize", tmp_path, "--out", tmp_path / "o", "--config", cfg, "--rounds", "0")
    assert_one_line_error(code, err, "--rounds 0: Input should be greater than or equal to 1")


def test_help_shows_whole_option_names_and_literal_brackets(capsys):
    code, out, _ = run(capsys, "optimize", "--help")
    assert code == 0 and "--representative-samples" in out and "…" not in out
    code, out, _ = run(capsys, "train", "--help")
    assert code == 0 and "[train]" in out


def test_optimize_config_file_and_flags_layer(tmp_path):
    from edgeopt.cli import _optimize_config

    cfg = tmp_path / "c.toml"
    cfg.write_text('[optimize]\nrepresentative_samples = 50\nmethods = ["f0_float32", "f2_int8"]\n'
                   "[optimize.measure]\nthreads = 2\nrounds = 7\n")
    resolved = _optimize_config(cfg, None, None, 9, None, None, "paper", None, None, None, 0.5, None, "all")
    assert resolved.representative_samples == 50 and resolved.methods == ("f0_float32", "f2_int8")
    assert resolved.measure.threads == 2 and resolved.measure.rounds == 9  # the flag wins over the file
    assert resolved.objective.form == "paper" and resolved.objective.max_metric_loss == 0.5
    assert resolved.measure.train_images is None  # 'all'
    assert _optimize_config(None, None, None, None, None, None, None, None, None, None, None, None, None,
                            no_guard=True).objective.max_metric_loss is None
    assert _optimize_config(None, None, None, None, None, None, None, None, None, None, None, None, None).objective.max_metric_loss == 1.0


def test_classify_prints_top_k_for_an_optimized_variant(capsys, tiny_optimized, synthetic_dir):
    out, results = tiny_optimized
    image = sorted((synthetic_dir / "carton").glob("*.jpg"))[0]
    code, stdout, _ = run(capsys, "classify", out / "variants" / "f3_int8_uint8io.tflite", image, "--top-k", "2")
    assert code == 0
    labels = [part.split()[0] for part in stdout.split(": ", 1)[1].split(", ")]
    assert len(labels) == 2 and set(labels) <= set(results.model.classes)


def test_inspect_says_what_a_device_must_feed_f3(capsys, tiny_optimized):
    out, _ = tiny_optimized
    code, stdout, _ = run(capsys, "inspect", out / "variants" / "f3_int8_uint8io.tflite")
    assert code == 0
    assert "input pixels: uint8" in stdout and "device feeds: raw camera bytes" in stdout
    assert "QUANTIZE" in stdout and "int8" in stdout


@needs(CORAL)
def test_classify_a_coral_model_with_its_labels(capsys):
    code, stdout, _ = run(capsys, "classify", CORAL / "mobilenet_v2_1.0_224_quant.tflite", CORAL / "cat.bmp",
                          "--labels", CORAL / "imagenet_labels.txt", "--top-k", "1")
    assert code == 0 and "cat" in stdout.lower()


def test_help_and_the_objective_do_not_load_tensorflow():
    code = (
        "import sys; from edgeopt.cli import main; import edgeopt.objective, edgeopt.report;"
        "main(['--help']); print(json.dumps(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", "import json;" + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize("command", ["train", "optimize", "demo", "inspect", "classify", "methods"])
def test_every_command_has_help(capsys, command):
    code, out, _ = run(capsys, command, "--help")
    assert code == 0 and "Usage" in out


def test_device_bench_never_writes_into_the_run_it_reads(capsys, tiny_optimized):
    run_dir, _ = tiny_optimized
    before = (run_dir / "results.json").read_bytes()
    code, _, err = run(capsys, "device", "bench", run_dir, "--out", run_dir / "results.json", "--force")
    assert_one_line_error(code, err, "which this command reads")
    assert (run_dir / "results.json").read_bytes() == before


def test_choose_and_publish_job_take_the_results_file_as_well_as_its_folder(capsys, tiny_optimized, tmp_path):
    run_dir, _ = tiny_optimized
    code, _, err = run(capsys, "choose", run_dir / "results.json", "--device-results", tmp_path / "none.json")
    assert_one_line_error(code, err, "none.json")  # got past the run: the missing device file is named
    code, _, err = run(capsys, "choose", run_dir / "labels.json", "--device-results", tmp_path / "none.json")
    assert_one_line_error(code, err, "not an optimize run folder")


def test_device_run_once_exits_1_when_the_repository_cannot_be_reached(capsys, tmp_path):
    from edgeopt.release.keys import generate_keys
    from edgeopt.release.repository import Repository
    from tests.delivery_helpers import free_port

    generate_keys(tmp_path / "keys", ("stable",))
    root = Repository(tmp_path / "repo").init(tmp_path / "keys", ("stable",))
    code, out, err = run(capsys, "device", "run", "--server", f"http://127.0.0.1:{free_port()}", "--state", tmp_path / "d",
                         "--root", root, "--once")
    assert code == 1 and "unreachable" in out and "Traceback" not in err


@pytest.mark.parametrize("flag, value, fragment", [
    ("--guard", "lenient", "--guard lenient"),
    ("--margin", "-0.1", "--margin -0.1"),
])
def test_a_bad_guard_or_margin_is_one_line_naming_the_flag(capsys, tmp_path, flag, value, fragment):
    code, _, err = run(capsys, "optimize", tmp_path / "nope", "--out", tmp_path / "o", flag, value)
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "o").exists()


def test_choose_again_under_another_guard_and_margin(capsys, tiny_optimized, tmp_path):
    """`choose` remakes a run's choice for a device under the rules given; the device's choice records them."""
    import hashlib

    from edgeopt.config import MeasureConfig
    from edgeopt.device.bench import bench_run
    from edgeopt.results import load_results

    run, _ = tiny_optimized
    device = bench_run(run, MeasureConfig(rounds=3, invocations=2, warmup=1))
    assert device.source_results_sha256 == hashlib.sha256((run / "results.json").read_bytes()).hexdigest()
    (tmp_path / "device.json").write_text(device.to_json())
    code, out, err = run_choose(capsys, run, tmp_path, "--guard", "non-inferiority", "--margin", "0.05")
    assert code == 0, err
    chosen = load_results(tmp_path / "choice" / "target-1")
    # on a device, non-inferiority is the build machine's verdict; the device judges what it shows worse
    assert chosen.choice.objective["guard"] == "benefit-of-doubt" and chosen.choice.objective["margin"] == 0.05
    assert any("the non-inferiority guard is the build machine's" in r for r in chosen.choice.reasons)
    # the run's own report: each variant's guard in words, and its answers changed against float32
    report = (run / "report.md").read_text()
    assert "| changed % [95%] |" in report and "## The accuracy guard, variant by variant" in report
    f4 = load_results(run).variant("f4_float16")
    assert f4.fidelity is not None and f4.fidelity.test_images == len(f4.predictions.test)
    assert "**f4_float16**: " in report


def run_choose(capsys, run_dir, tmp_path, *flags):
    return run(capsys, "choose", run_dir, "--device-results", tmp_path / "device.json", "--out", tmp_path / "choice", *flags)


@pytest.mark.parametrize("args, fragment", [
    (["--w-time", "inf"], "--w-time inf: Input should be a finite number (got inf)"),
    (["--w-size", "nan"], "--w-size nan: Input should be a finite number (got nan)"),
    (["--w-accuracy", "-inf"], "--w-accuracy -inf: Input should be a finite number"),
    (["--max-accuracy-drop", "inf"], "--max-accuracy-drop inf: Input should be a finite number"),
    (["--confidence", "nan"], "--confidence nan: Input should be a finite number"),
    (["--methods", "f0_float32,pruned_int8", "--sparsity", "nan"], "--sparsity nan: Input should be a finite number"),
    (["--input-range", "-inf,1"], "--input-range '-inf,1' needs 2 comma-separated finite numbers"),
    (["--input-mean", "0.5,nan,0.5", "--input-std", "1,1,1"], "--input-mean '0.5,nan,0.5' needs 3 comma-separated finite"),
    (["--input-range", "1,-1"], "--input-range 1.0,-1.0: the low end must be below the high end"),
    (["--target", "foo"], "--target foo: unknown runtime 'foo'; use one of: litert, onnxruntime"),
    (["--backends", "litert,tflite"], "--backends litert,tflite: unknown runtime 'tflite'; use one of: litert, onnxruntime"),
])
def test_every_number_must_be_finite_and_in_range_and_the_error_names_the_flag(capsys, tmp_path, tiny_model, args, fragment):
    out = tmp_path / "o"
    code, _, err = run(capsys, "optimize", tiny_model, "--out", out, *args)
    assert_one_line_error(code, err, fragment)
    assert not out.exists() and not list(tmp_path.iterdir())  # refused before any work


@pytest.mark.parametrize("name, text", [
    ("c.toml", "[optimize.objective]\nweight_time = inf\n"),
    ("c.toml", "[optimize.objective]\nconfidence = nan\n"),
    ("c.json", '{"optimize": {"objective": {"weight_size": Infinity}}}'),
    ("c.json", '{"optimize": {"objective": {"metric": {"display_scale": NaN}}}}'),
    ("c.json", '{"optimize": {"repair_target_pp": 1e400}}'),
    ("c.toml", "[train]\nalpha = nan\n"),
])
def test_a_config_file_cannot_smuggle_in_infinity_or_nan(capsys, tmp_path, name, text):
    cfg = tmp_path / name
    cfg.write_text(text)
    command = "train" if "[train]" in text else "optimize"
    code, _, err = run(capsys, command, tmp_path / "nowhere", "--out", tmp_path / "o", "--config", cfg)
    assert_one_line_error(code, err, "Input should be a finite number")
    assert str(cfg) in err


def test_classify_refuses_a_non_finite_input_range(capsys, tmp_path):
    code, _, err = run(capsys, "classify", tmp_path / "m.tflite", tmp_path / "x.jpg", "--input-range", "0,inf")
    assert_one_line_error(code, err, "--input-range '0,inf' needs 2 comma-separated finite numbers")
