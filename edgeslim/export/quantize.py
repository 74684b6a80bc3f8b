"""Static INT8 quantization of an exported ONNX graph with ONNX Runtime, calibrated on user data.

Two targets, one calibration:
  * ``cpu`` - ONNX Runtime's CPU guidance: Q/DQ format, uint8 activations, int8 per-channel weights,
    7-bit weights (``reduce_range``) on x86 CPUs without VNNI.
  * ``tensorrt`` - explicit quantization as TensorRT wants it: symmetric int8 activations and weights
    (zero points 0), biases left in float. TensorRT 8.x-11 build INT8 engines from such a graph; on
    TensorRT 11 it is the only INT8 path (implicit calibration was removed).

The accuracy change is measured, never assumed: :func:`compare_onnx` runs the FP32 and INT8 graphs on
the same labelled samples in ONNX Runtime.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import onnx
import torch
from torch.utils.data import Dataset

from .onnx import ort_session

__all__ = ["QuantizeResult", "quantize_int8", "calibration_arrays", "onnx_accuracy", "compare_onnx", "output_agreement"]


@dataclass
class QuantizeResult:
    path: str
    target: str
    calibration_samples: int
    method: str
    per_channel: bool
    reduce_range: bool
    activation_type: str
    weight_type: str
    quantize_nodes: int
    seconds: float
    calibration_cache: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibration_arrays(data: Dataset | Iterable, count: int = 256, seed: int = 0) -> list[np.ndarray]:
    """``count`` input samples (C, H, W float32 arrays) from a labelled Dataset, balanced over classes
    where the labels are known, or the first ``count`` items of any iterable of tensors / (x, y) pairs."""
    from ..data import calibration_subset, targets_of

    if isinstance(data, Dataset):
        try:
            classes = len(targets_of(data).unique())
            data = calibration_subset(data, per_class=max(1, math.ceil(count / classes)), seed=seed)
        except (AttributeError, TypeError):
            pass  # no labels exposed: take samples in order
    out = []
    for item in data:
        x = item[0] if isinstance(item, (tuple, list)) else item
        x = torch.as_tensor(x).float()
        out.extend(x.numpy() if x.dim() == 4 else [x.numpy()])
        if len(out) >= count:
            break
    if not out:
        raise ValueError("the calibration data is empty")
    return out[:count]


def _batches(session, samples: list[np.ndarray]) -> list[np.ndarray]:
    """Group samples into the batch size the graph's input takes (1 for a dynamic batch axis)."""
    batch = session.get_inputs()[0].shape[0]
    batch = batch if isinstance(batch, int) and batch > 0 else 1
    usable = len(samples) // batch * batch
    if usable == 0:
        raise ValueError(f"the graph takes batches of {batch} but only {len(samples)} calibration samples were given")
    return [np.stack(samples[i:i + batch]).astype(np.float32) for i in range(0, usable, batch)]


def quantize_int8(onnx_path: str | Path, out_path: str | Path, calibration: Iterable[np.ndarray], *,
                  target: str = "cpu", method: str = "minmax", per_channel: bool = True,
                  reduce_range: bool | None = None, calibration_cache: str | Path | None = None) -> QuantizeResult:
    """Write an INT8 Q/DQ version of ``onnx_path`` calibrated on ``calibration`` (input arrays)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    if target not in ("cpu", "tensorrt"):
        raise ValueError(f"target must be cpu or tensorrt, not {target!r}")
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise ValueError(f"calibration method must be one of {', '.join(methods)}, not {method!r}")
    session = ort_session(onnx_path)
    name = session.get_inputs()[0].name
    batches = _batches(session, list(calibration))
    del session

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(batches)

        def get_next(self):
            return {name: batch} if (batch := next(self.items, None)) is not None else None

    if target == "cpu":
        from ..devices.host import cpu_flags

        if reduce_range is None:  # ONNX Runtime's advice: 7-bit weights on x86 without VNNI to avoid saturation
            flags = cpu_flags()
            reduce_range = "avx2" in flags and not flags & {"avx512_vnni", "avx_vnni", "avx512vnni"}
        activation, extra = QuantType.QUInt8, {}
    else:
        reduce_range = False
        activation, extra = QuantType.QInt8, {"ActivationSymmetric": True, "WeightSymmetric": True,
                                              "QuantizeBias": False}
    t0 = time.perf_counter()
    cache = Path(calibration_cache) if calibration_cache else None
    # ONNX Runtime logs a pre-processing hint on the root logger; the exported graph is already optimised.
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        quantize_static(str(onnx_path), str(out_path), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, reduce_range=reduce_range, activation_type=activation,
                        weight_type=QuantType.QInt8, calibrate_method=methods[method], extra_options=extra,
                        calibration_cache_path=str(cache) if cache else None)
    finally:
        root.setLevel(level)
    seconds = time.perf_counter() - t0
    graph = onnx.load(str(out_path), load_external_data=False)
    q_nodes = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.graph.node)
    return QuantizeResult(str(out_path), target, len(batches) * batches[0].shape[0], method, per_channel,
                          bool(reduce_range), activation.name, "QInt8", q_nodes, seconds,
                          str(cache) if cache else None)


def _predict(session, name: str, batch_size: int, dataset: Dataset, limit: int | None):
    preds, labels, buf, ys = [], [], [], []
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for i in range(n):
        x, y = dataset[i]
        buf.append(torch.as_tensor(x).float().numpy())
        ys.append(int(y))
        if len(buf) == batch_size or i == n - 1:
            if len(buf) < batch_size:  # a static batch: pad the last one and drop the padding's answers
                keep = len(buf)
                buf += [buf[-1]] * (batch_size - len(buf))
            else:
                keep = batch_size
            logits = session.run(None, {name: np.stack(buf)})[0]
            preds.extend(logits[:keep].argmax(axis=1).tolist())
            labels.extend(ys)
            buf, ys = [], []
    return np.array(preds), np.array(labels)


def onnx_accuracy(path: str | Path, dataset: Dataset, limit: int | None = None) -> dict[str, Any]:
    """Top-1 accuracy (percent) of an ONNX classifier on a labelled data set, in ONNX Runtime."""
    session = ort_session(path)
    inp = session.get_inputs()[0]
    batch = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else 32
    preds, labels = _predict(session, inp.name, batch, dataset, limit)
    return {"accuracy": 100.0 * float((preds == labels).mean()), "samples": int(len(labels)), "predictions": preds}


def compare_onnx(fp32_path: str | Path, int8_path: str | Path, dataset: Dataset, limit: int | None = None,
                 latency_runs: int = 0) -> dict[str, Any]:
    """Accuracy of the FP32 and INT8 graphs on the same samples, their top-1 agreement, and (with
    ``latency_runs``) their interleaved ONNX Runtime latency ratio on this host."""
    ref, q = onnx_accuracy(fp32_path, dataset, limit), onnx_accuracy(int8_path, dataset, limit)
    result = {"samples": ref["samples"], "accuracy_fp32": ref["accuracy"], "accuracy_int8": q["accuracy"],
              "accuracy_change": q["accuracy"] - ref["accuracy"],
              "top1_agreement": 100.0 * float((ref["predictions"] == q["predictions"]).mean())}
    if latency_runs:
        from ..runtime import interleaved_latency

        fns = {}
        for key, path in (("fp32", fp32_path), ("int8", int8_path)):
            sess = ort_session(path)
            inp = sess.get_inputs()[0]
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
            x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            fns[key] = (lambda s=sess, n=inp.name, v=x: s.run(None, {n: v}))
        lat = interleaved_latency(fns, runs=latency_runs, warmup=10)
        result["latency_ms"] = {k: v.to_dict() for k, v in lat.items()}
        result["int8_speedup"] = lat["fp32"].p50 / lat["int8"].p50
        result["latency_note"] = "ONNX Runtime CPU on this host, batch of the graph, interleaved, p50 ratio"
    return result


def output_agreement(fp32_path: str | Path, int8_path: str | Path, samples: list[np.ndarray]) -> dict[str, float]:
    """How closely the INT8 graph's outputs follow the FP32 graph's on real inputs (random noise would
    fall outside the calibrated ranges and say nothing): worst and mean cosine, worst relative error."""
    ref_s, q_s = ort_session(fp32_path), ort_session(int8_path)
    name = ref_s.get_inputs()[0].name
    cosines, rel = [], 0.0
    for batch in _batches(ref_s, samples):
        ref = ref_s.run(None, {name: batch})[0].astype(np.float64)
        got = q_s.run(None, {name: batch})[0].astype(np.float64)
        for r, g in zip(ref, got):
            cosines.append(float((r * g).sum() / (np.linalg.norm(r) * np.linalg.norm(g) + 1e-12)))
            rel = max(rel, float(np.abs(r - g).max() / (np.abs(r).max() + 1e-12)))
    return {"samples": len(cosines), "cosine_min": min(cosines), "cosine_mean": float(np.mean(cosines)),
            "max_rel_diff": rel}
