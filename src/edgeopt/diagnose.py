"""Why a variant is slow: evidence from its graph and from the CPU, in sentences for the report.

Reads only the typed results (graph facts, latencies, machine), so it knows no framework.
"""

from __future__ import annotations

from edgeopt.results import Results, Variant

# A quantized variant is "not faster" when it gains less than this over its float baseline.
EXPECTED_INT8_SPEEDUP = 1.3
# Below this baseline latency, fixed per-call costs are a large share of the time.
SMALL_MODEL_MS = 1.0


def _is_int8_compute(v: Variant) -> bool:
    assert v.graph is not None
    weights = v.graph.weight_dtypes
    biggest = max(weights, key=lambda k: weights[k].bytes) if weights else ""
    return biggest in ("int8", "uint8") and v.graph.hybrid_ops == 0 and "ConvInteger" not in v.graph.op_counts


def _float_baseline(v: Variant, results: Results) -> Variant:
    """The float32 variant of the same backend, else the run's baseline."""
    for other in results.variants:
        if (other.backend == v.backend and other.graph is not None and other.latency is not None
                and set(other.graph.weight_dtypes) <= {"float32", "int32", "int64"}):
            return other
    return results.baseline


def diagnose(results: Results) -> list[str]:
    """One sentence per finding, each naming its evidence."""
    machine = results.machine
    findings: list[str] = []
    no_dot = not machine.get("int8_dot_product")
    for v in results.variants:
        base = _float_baseline(v, results)
        if v is base or v.graph is None or v.latency is None or base.latency is None:
            continue
        speedup = base.latency.median_ms / v.latency.median_ms
        int8_compute = _is_int8_compute(v)
        # explain only what is slower than its float baseline (int8: not faster than expected)
        if speedup >= (EXPECTED_INT8_SPEEDUP if int8_compute else 1.0):
            continue
        g = v.graph
        ops = g.op_counts
        ratio = (
            f"{v.name} runs at {speedup:.2f}x the speed of {base.name} "
            f"({v.latency.median_ms:.2f} vs {base.latency.median_ms:.2f} ms)"
        )
        if g.hybrid_ops:
            findings.append(
                f"{ratio}: {g.hybrid_ops} of its ops are hybrid (float activations x int8 weights, "
                "quantized on the fly at every call); XNNPACK does not take hybrid ops, so they fall back to "
                "the reference CPU kernels. Use full-integer int8 (calibrated) instead."
            )
        if "ConvInteger" in ops or "DynamicQuantizeLinear" in ops:
            findings.append(
                f"{ratio}: the graph has {ops.get('ConvInteger', 0)} ConvInteger and "
                f"{ops.get('DynamicQuantizeLinear', 0)} DynamicQuantizeLinear nodes: activations are "
                "quantized at run time and ConvInteger has no fused fast path on CPU. Use static QDQ quantization."
            )
        if ops.get("Cast", 0) and "float16" in g.weight_dtypes and v.backend == "onnxruntime":
            why = ("although this CPU has AVX512-FP16, ONNX Runtime's CPU kernels for these float16 ops are slower "
                   "than its float32 ones here" if "avx512_fp16" in machine.get("speed_flags", ())
                   else "this CPU's ONNX Runtime kernels have no fast float16 path"
                   + (" (x86 without AVX512-FP16)" if machine.get("machine") in ("x86_64", "AMD64") else ""))
            findings.append(
                f"{ratio}: it computes in float16, with {ops['Cast']} Cast nodes converting between float16 "
                f"and float32; {why}, so float16 only halves the file."
            )
        if "float16" in g.weight_dtypes and g.dequantize_ops and v.backend == "litert":
            findings.append(
                f"{v.name} stores weights as float16 and has {g.dequantize_ops} DEQUANTIZE ops turning them "
                "into float32 before the convolutions: it halves the file, computes in float32, and so runs "
                f"at the speed of {base.name} ({speedup:.2f}x)."
            )
        if int8_compute:
            reasons = []
            if no_dot:
                reasons.append(
                    f"this CPU ({machine['cpu']}) has no int8 dot-product instructions (no AVX512-VNNI, AVX-VNNI "
                    "or Arm dot-product in its flags), so int8 convolutions widen to 16-bit multiplies and gain "
                    "little over float32 FMA"
                )
            if base.latency.median_ms < SMALL_MODEL_MS:
                reasons.append(
                    f"the model is tiny ({base.latency.median_ms:.2f} ms per image): fixed per-call costs "
                    f"(input quantize, {g.quantize_ops} QUANTIZE / {g.dequantize_ops} DEQUANTIZE ops, "
                    "dispatch) weigh as much as the arithmetic int8 saves"
                )
            if reasons:
                findings.append(f"{ratio} although it computes in int8: " + "; ".join(reasons) + ".")
    return findings
