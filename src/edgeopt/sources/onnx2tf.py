"""ONNX -> TensorFlow with onnx2tf, in an environment of its own, so that a PyTorch model exported
to ONNX gets the study's LiteRT variants too.

onnx2tf 1.29 (the last line for Python 3.11) pins tensorflow 2.19, numpy 1.26, onnxruntime 1.23 and
onnx 1.19 exactly: it cannot share edgeopt's environment. `edgeopt setup onnx2tf` creates a virtual
environment with it (the one network access, on the user's command); optimize then runs it in a
subprocess, which writes a SavedModel (NHWC input, as LiteRT takes) that TensorFlow's converter in
edgeopt's own environment reads like any other. Without that environment optimize builds the ONNX
Runtime variants and says the one command to run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from edgeopt.errors import ConfigError, EdgeoptError

ONNX2TF = "onnx2tf==1.29.24"
SETUP_COMMAND = "edgeopt setup onnx2tf"
# Where the environment lives: $EDGEOPT_ONNX2TF_ENV, else the user's cache folder.
ENV_VARIABLE = "EDGEOPT_ONNX2TF_ENV"
# A conversion of a MobileNet takes well under a minute; a large model, minutes.
CONVERT_TIMEOUT_S = 1800


@dataclass(frozen=True)
class Converter:
    """An onnx2tf environment that setup completed."""

    python: Path
    version: str


def env_dir() -> Path:
    given = os.environ.get(ENV_VARIABLE)
    if given:
        return Path(given)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "edgeopt" / f"onnx2tf-{ONNX2TF.split('==')[1]}"


def find_converter() -> Converter | None:
    """The environment `edgeopt setup onnx2tf` made, or None."""
    folder = env_dir()
    python = folder / "bin" / "python"
    if not (folder / ".complete").is_file() or not python.is_file():
        return None
    return Converter(python, (folder / ".complete").read_text().strip() or ONNX2TF)


def setup(force: bool = False, log: Path | None = None) -> Converter:
    """Create the environment (python -m venv, then pip install onnx2tf with its own pins)."""
    folder = env_dir()
    if find_converter() is not None and not force:
        return find_converter()  # type: ignore[return-value]
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    steps = [[sys.executable, "-m", "venv", str(folder)],
             [str(folder / "bin" / "python"), "-m", "pip", "install", "--quiet", ONNX2TF]]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            shutil.rmtree(folder, ignore_errors=True)
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ConfigError(f"'{' '.join(step[-3:])}' failed ({last}); check that pip can reach the package "
                              f"registry, then run '{SETUP_COMMAND}' again")
    (folder / ".complete").write_text(ONNX2TF)
    return Converter(folder / "bin" / "python", ONNX2TF)


# How onnx2tf names the op it could not convert: "ERROR: Einsum OP is not yet implemented." for an
# op it does not know, "ERROR: onnx_op_name: /model/Einsum" after the trace of one that failed.
_NOT_IMPLEMENTED = re.compile(r"(\S+) OP is not yet implemented")
_FAILED_NODE = re.compile(r"onnx_op_name:\s*(\S+)")


def convert_onnx(converter: Converter, model: Path, out: Path, log_path: Path | None = None,
                 nhwc_input: str | None = None) -> tuple[Path | None, str]:
    """(the SavedModel folder, "") or (None, why it failed, naming the op when onnx2tf does).
    `nhwc_input`: the name of an input that is already NHWC (e.g. a Keras export), kept as it is."""
    model, out = Path(model).resolve(), Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    simplified = _basic_optimized(model, out.parent / f"{model.stem}-basic.onnx")
    command = [str(converter.python), "-m", "onnx2tf", "-i", str(simplified), "-o", str(out), "-v", "error"]
    if nhwc_input:
        command += ["-kt", nhwc_input]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CONVERT_TIMEOUT_S, env=env,
                              cwd=out.parent)
    except subprocess.TimeoutExpired:
        return None, f"onnx2tf did not finish within {CONVERT_TIMEOUT_S} s"
    except OSError as exc:
        raise EdgeoptError(f"cannot run onnx2tf ({exc}); run '{SETUP_COMMAND} --force' to create its environment again") \
            from None
    text = done.stdout + done.stderr
    if log_path is not None:
        with open(log_path, "a") as log:
            log.write(f"$ {' '.join(command)}\n{text}\n")
    if done.returncode == 0 and (out / "saved_model.pb").is_file():
        return out, ""
    plain = _plain(text)
    unknown = _NOT_IMPLEMENTED.findall(plain)
    if unknown:
        return None, f"onnx2tf cannot convert the op {unknown[-1]} (not implemented in {converter.version})"
    failed = _FAILED_NODE.findall(plain)
    if failed:
        return None, f"onnx2tf could not convert the op {_op_type(model, failed[-1])} (node {failed[-1]})"
    lines = [line.strip() for line in plain.splitlines() if line.strip()]
    last = next((line for line in reversed(lines) if line.startswith("ERROR:")), lines[-1] if lines else "no output")
    return None, f"onnx2tf failed ({last.strip()[:300]})"


def _basic_optimized(model: Path, out: Path) -> Path:
    """The model after ONNX Runtime's basic graph optimizations (constant folding, Conv + BatchNorm /
    Mul / Add fusion: exact, and the same on every CPU). onnx2tf fails on the unfused batch-norm
    arithmetic a Keras model exported with tf2onnx has (a MobileNetV2's depthwise "batchnorm/mul_1"),
    and converts the fused graph, which is what a PyTorch export looks like. The original file when
    ONNX Runtime cannot do it."""
    try:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(out)
        options.log_severity_level = 3
        ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    except Exception:  # onnxruntime raises its own types; onnx2tf then says what it makes of the original
        return model
    return out if out.is_file() else model


def _op_type(model: Path, node_name: str) -> str:
    """The type of the node onnx2tf names (it prints the node's name only)."""
    try:
        import onnx

        graph = onnx.load(str(model), load_external_data=False).graph
    except Exception:
        return "?"
    wanted = {node_name, node_name.replace("wa/", "/")}
    return next((n.op_type for n in graph.node if n.name in wanted or n.name.replace(":", "_") in wanted), "?")


def _plain(text: str) -> str:
    """Without the terminal colour codes onnx2tf prints."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)
