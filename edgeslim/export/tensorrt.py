"""TensorRT: version tables, operator-support check, the ``trtexec`` recipe and the builder API.

TensorRT cannot be installed on edgeslim's development machines, so this module is written against
NVIDIA's documented API and its behaviour per version (sources in comments). ``build_engine`` runs
wherever ``tensorrt`` imports and a CUDA GPU is present; everywhere else it returns the reason it
did not build, and :func:`trtexec_command` gives the command that builds and times the same engine
on the device itself.

Version facts used here:
  * max ONNX opset: onnx-tensorrt ``docs/operators.md`` per release (7.x: 11; 8.0-8.4: 13; 8.5/8.6: 17;
    9.2: 19; 10.0: "opset 9 to 20"; 10.15 and 11.x: "opset 9 to 24").
  * trtexec: TensorRT 7 needs ``--explicitBatch`` for ONNX (8.x forces it) and has no timing cache (8.0);
    ``--workspace=N`` (MiB) until 8.3, ``--memPoolSize=workspace:N`` from 8.4 (``--workspace``
    removed in 10.0, as were ``--explicitBatch`` and implicit batch); TensorRT 11 removed the precision
    flags (``--fp16``, ``--int8``, ``--best``, ``--calib``): networks are strongly typed, so FP16 and INT8
    must be in the ONNX graph itself; and made CUDA graphs, spin-wait and excluded data transfers the
    defaults (``--useCudaGraph``, ``--useSpinWait``, ``--noDataTransfers`` became no-ops).
  * builder API: ``set_memory_pool_limit`` from 8.4 (``max_workspace_size`` before); the
    EXPLICIT_BATCH network flag is required before 10.0 and deprecated from 10.0; INT8 calibrators
    (``IInt8EntropyCalibrator2``) deprecated in 10.1 and removed in 11, as were ``BuilderFlag.FP16/INT8``.
"""
from __future__ import annotations

import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

__all__ = ["parse_version", "max_onnx_opset", "supported_ops", "check_ops", "trtexec_command", "tensorrt_status",
           "build_engine", "TensorRTResult"]


def parse_version(version: str | Sequence[int]) -> tuple[int, int]:
    """``"10.3.0.30"`` -> ``(10, 3)``; ValueError on anything else."""
    if isinstance(version, (tuple, list)):
        parts = [int(v) for v in version]
    else:
        try:
            parts = [int(v) for v in str(version).strip().split(".") if v != ""]
        except ValueError:
            raise ValueError(f"TensorRT version {version!r} must look like 10.3 or 8.5.2") from None
    if not parts or parts[0] < 7:
        raise ValueError(f"TensorRT version {version!r} is not supported (edgeslim knows TensorRT 7 to 11)")
    return parts[0], parts[1] if len(parts) > 1 else 0


# (first version, highest ONNX opset its parser accepts), from onnx-tensorrt docs/operators.md.
# Versions between two documented points keep the lower value (a safe choice: a lower opset always parses).
_MAX_OPSET = [((7, 0), 11), ((8, 0), 13), ((8, 5), 17), ((9, 2), 19), ((10, 0), 20), ((10, 15), 24)]


def max_onnx_opset(version: str | Sequence[int]) -> int:
    v = parse_version(version)
    return [opset for first, opset in _MAX_OPSET if v >= first][-1]


# ONNX operators each TensorRT release's parser added, keyed by the first release that supports them.
# The 8.0 set is the support matrix of onnx-tensorrt docs/operators.md for TensorRT 8.0-8.4 (Y rows);
# later entries follow the onnx-tensorrt changelog and the 8.5 / 10.15 support matrices.
_OPS_ADDED: dict[tuple[int, int], frozenset[str]] = {
    (7, 0): frozenset("""
        Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu Clip
        Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout Elu
        Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements Gemm GlobalAveragePool GlobalLpPool
        GlobalMaxPool Greater GreaterOrEqual GRU HardSigmoid Identity If ImageScaler InstanceNormalization LeakyRelu Less
        LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean Min Mul Neg
        NonMaxSuppression Not Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomUniform RandomUniformLike Range
        ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
        ReduceSumSquare Relu Reshape Resize ReverseSequence RNN ScaledTanh Scan Selu Shape Sigmoid Sin Sinh Size Slice
        Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose
        Unsqueeze Upsample Where""".split()),
    (8, 2): frozenset("Einsum IsNaN GatherND Scatter ScatterElements ScatterND Sign Round".split()),
    (8, 4): frozenset("Shrink Xor".split()),
    (8, 5): frozenset("""HardSwish Mod NonZero OneHot RandomNormal RandomNormalLike Reciprocal RoiAlign
        MeanVarianceNormalization GridSample Trilu""".split()),
    (8, 6): frozenset("GroupNormalization LayerNormalization IsInf".split()),
    (9, 2): frozenset({"Hardmax"}),
    (10, 0): frozenset("CastLike Gelu Mish".split()),
    (10, 1): frozenset({"DeformConv"}),
    (10, 4): frozenset("BlackmanWindow HammingWindow HannWindow".split()),
    (10, 5): frozenset({"STFT"}),
    (10, 14): frozenset({"Attention"}),
    (10, 15): frozenset("RotaryEmbedding RMSNormalization TensorScatter".split()),
}


def supported_ops(version: str | Sequence[int]) -> frozenset[str]:
    """ONNX operator types (default domain) the TensorRT ``version`` parser imports natively."""
    v = parse_version(version)
    ops: set[str] = set()
    for first, added in _OPS_ADDED.items():
        if v >= first:
            ops |= added
    return frozenset(ops)


def _attr(node, name: str, default=None):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _restrictions(node, v: tuple[int, int], initializers: set[str], nonzero: set[str]) -> list[str]:
    """Documented per-operator restrictions (onnx-tensorrt support matrix) that a vision graph can hit."""
    problems = []
    op = node.op_type
    if op in ("Conv", "ConvTranspose", "AveragePool", "MaxPool", "LpPool"):
        kernel = _attr(node, "kernel_shape")
        if kernel is not None and len(kernel) not in (2, 3) and not (op.startswith("Conv") and v >= (8, 5)):
            problems.append(f"{len(kernel)}-D {op}: TensorRT {v[0]}.{v[1]} supports 2-D and 3-D only")
        dil = _attr(node, "dilations")
        if op.endswith("Pool") and dil and any(d != 1 for d in dil):
            problems.append(f"{op} with dilations other than 1 is not supported by TensorRT")
    if op in ("Conv", "ConvTranspose") and v < (8, 5) and len(node.input) > 1 and node.input[1] not in initializers:
        problems.append(f"{op} weights computed at run time: TensorRT {v[0]}.{v[1]} needs them as an initializer")
    if op == "MaxPool" and len(node.output) > 1 and node.output[1]:
        problems.append("MaxPool's Indices output is not supported by TensorRT")
    if op == "Resize":
        mode = (_attr(node, "mode", b"nearest") or b"").decode()
        ctm = (_attr(node, "coordinate_transformation_mode", b"half_pixel") or b"").decode()
        if mode not in ("nearest", "linear"):
            problems.append(f"Resize mode {mode!r}: TensorRT supports nearest and linear")
        if ctm not in ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"):
            problems.append(f"Resize coordinate_transformation_mode {ctm!r} is not supported by TensorRT")
        if _attr(node, "antialias", 0):
            problems.append("Resize with antialias is not supported by TensorRT")
    if op in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 and node.input[2] in nonzero:
        problems.append(f"{op} with a non-zero zero point: TensorRT quantization is symmetric (quantize for "
                        "target tensorrt)")
    if op == "TopK" and len(node.input) > 1 and node.input[1] not in initializers and v < (8, 6):
        problems.append(f"TopK with a run-time K: TensorRT {v[0]}.{v[1]} needs K as an initializer")
    return problems


def check_ops(model, version: str | Sequence[int]) -> dict[str, Any]:
    """Check an ONNX model's operators against TensorRT ``version``'s parser before copying it to a device.

    Returns ``{"tensorrt", "opset", "max_opset", "opset_ok", "unsupported": [{"op", "count", "nodes"}],
    "restricted": [{"op", "reason", "count", "nodes"}], "ok"}`` (at most 5 node names per entry). Custom-domain ops are reported as unsupported (they need a plugin).
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    v = parse_version(version)
    known = supported_ops(v)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    initializers = {i.name for i in model.graph.initializer}
    zero_points = {n.input[2] for n in model.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2}
    nonzero = {i.name for i in model.graph.initializer if i.name in zero_points
               and i.data_location != onnx.TensorProto.EXTERNAL and np.any(numpy_helper.to_array(i) != 0)}
    unsupported: dict[str, list[str]] = {}
    restricted: dict[tuple[str, str], list[str]] = {}
    for node in model.graph.node:
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        if op not in known:
            unsupported.setdefault(op, []).append(node.name)
            continue
        for reason in _restrictions(node, v, initializers, nonzero):
            restricted.setdefault((op, reason), []).append(node.name)
    limit = max_onnx_opset(v)
    return {
        "tensorrt": f"{v[0]}.{v[1]}",
        "opset": opset,
        "max_opset": limit,
        "opset_ok": opset is None or opset <= limit,
        "unsupported": [{"op": op, "count": len(names), "nodes": names[:5]} for op, names in sorted(unsupported.items())],
        "restricted": [{"op": op, "reason": reason, "count": len(names), "nodes": names[:5]}
                       for (op, reason), names in restricted.items()],
        "ok": (opset is None or opset <= limit) and not unsupported and not restricted,
    }


def _shape_text(shape: Iterable[int]) -> str:
    return "x".join(str(int(d)) for d in shape)


def trtexec_command(onnx_path: str, tensorrt: str | Sequence[int], *, engine_path: str | None = None,
                    precision: str = "fp16", workspace_mb: int = 1024, timing_cache: str | None = None,
                    dla_core: int | None = None, calibration_cache: str | None = None,
                    input_name: str = "input", input_shape: Sequence[int] | None = None,
                    dynamic_batch: tuple[int, int, int] | None = None, timing: bool = True) -> str:
    """The ``trtexec`` command that builds (and times) the engine on the device, valid for its TensorRT.

    ``precision`` fp32 | fp16 | int8. For INT8 either ``calibration_cache`` (a TensorRT calibration cache,
    TensorRT < 11) or an ONNX graph that already holds Q/DQ nodes (explicit quantization; required on 11).
    On TensorRT 11 the precision lives in the graph: pass the FP16 / Q/DQ ONNX file as ``onnx_path``.
    ``dynamic_batch`` = (min, opt, max) batch sizes for an ONNX input whose batch axis is dynamic.
    """
    v = parse_version(tensorrt)
    if precision not in ("fp32", "fp16", "int8"):
        raise ValueError(f"precision must be fp32, fp16 or int8, not {precision!r}")
    if dla_core is not None and precision == "fp32":
        raise ValueError("the DLA runs FP16 or INT8 only: use --precision fp16 or int8 with a DLA core")
    engine_path = engine_path or str(Path(onnx_path).with_suffix(".engine"))
    args = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    if v < (8, 0):
        args.append("--explicitBatch")  # TensorRT 7's trtexec defaults to implicit batch, which ONNX cannot use
    if dynamic_batch is not None:
        if input_shape is None:
            raise ValueError("a dynamic batch needs the input shape (C, H, W after the batch axis)")
        rest = list(input_shape[1:])
        lo, opt, hi = dynamic_batch
        args += [f"--minShapes={input_name}:{_shape_text([lo, *rest])}",
                 f"--optShapes={input_name}:{_shape_text([opt, *rest])}",
                 f"--maxShapes={input_name}:{_shape_text([hi, *rest])}"]
        if timing:
            args.append(f"--shapes={input_name}:{_shape_text([opt, *rest])}")
    if v < (11, 0):
        if precision in ("fp16", "int8"):
            args.append("--fp16")  # INT8 engines keep FP16 for the layers that stay in floating point
        if precision == "int8":
            args.append("--int8")
            if calibration_cache:
                args.append(f"--calib={calibration_cache}")
    elif calibration_cache:
        raise ValueError("TensorRT 11 removed calibration caches: export a Q/DQ (explicitly quantized) ONNX instead")
    # Both spellings take MiB; --workspace was deprecated in 8.4 and removed in 10.0.
    args.append(f"--workspace={workspace_mb}" if v < (8, 4) else f"--memPoolSize=workspace:{workspace_mb}")
    if timing_cache and v >= (8, 0):  # timing caches arrived in TensorRT 8.0
        args.append(f"--timingCacheFile={timing_cache}")
    if dla_core is not None:
        args += [f"--useDLACore={dla_core}", "--allowGPUFallback"]
    if timing:
        args += ["--warmUp=500", "--duration=10", "--iterations=200"]
        if v < (11, 0):
            # TensorRT 11 does these by default; passing them there is a deprecated no-op. CUDA graphs are
            # left out for DLA engines, whose work is not captured in a GPU stream.
            args += (["--useCudaGraph"] if dla_core is None else []) + ["--noDataTransfers", "--useSpinWait"]
        args.append("--percentile=50,90,99" if v >= (10, 0) else "--percentile=99")
    else:
        args.append("--skipInference")
    return " ".join(shlex.quote(a) for a in args)


def tensorrt_status() -> tuple[bool, str, Any]:
    """(can build here, reason when not, the tensorrt module or None)."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        return False, (f"the tensorrt Python package does not import here ({exc}); build on the device with the "
                       "trtexec command, or install TensorRT (JetPack ships it; pip install tensorrt from "
                       "pypi.nvidia.com elsewhere)"), None
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:  # a torch without CUDA support
        has_gpu = False
    if not has_gpu:
        return False, f"tensorrt {trt.__version__} imports but no CUDA GPU is visible to torch", trt
    return True, "", trt


@dataclass
class TensorRTResult:
    built: bool
    reason: str = ""
    engine: str | None = None
    engine_bytes: int | None = None
    build_s: float | None = None
    tensorrt_version: str | None = None
    gpu: str | None = None
    precision: str | None = None
    timing_cache: str | None = None
    calibration_cache: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None and v != []}


def _entropy_calibrator(trt, batches, cache_path: Path):
    """An IInt8EntropyCalibrator2 feeding ``batches`` (numpy arrays shaped like the input) from GPU memory."""
    import torch

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches = iter(batches)
            self.batch_size = int(batches[0].shape[0]) if batches else 1  # no batches: the cache answers
            self.current = None  # keeps the device buffer alive while TensorRT reads it

        def get_batch_size(self):
            return self.batch_size

        def get_batch(self, names):
            try:
                batch = next(self.batches)
            except StopIteration:
                return None
            self.current = torch.as_tensor(batch, dtype=torch.float32).contiguous().cuda()
            return [int(self.current.data_ptr())]

        def read_calibration_cache(self):
            return cache_path.read_bytes() if cache_path.exists() else None

        def write_calibration_cache(self, cache):
            cache_path.write_bytes(bytes(cache))

    return EntropyCalibrator()


def build_engine(onnx_path: str, engine_path: str, *, precision: str = "fp16", workspace_mb: int = 1024,
                 timing_cache: str | None = None, dla_core: int | None = None, calibration_batches=None,
                 calibration_cache: str | None = None, input_shape: Sequence[int] | None = None,
                 dynamic_batch: tuple[int, int, int] | None = None) -> TensorRTResult:
    """Build a serialized engine with the TensorRT Python API, for the GPU of *this* machine.

    INT8 on TensorRT < 11 uses an entropy calibrator over ``calibration_batches`` (or a saved
    ``calibration_cache``); on TensorRT 11 ``onnx_path`` must already be an FP16 / Q/DQ graph.
    Never raises for a missing TensorRT or GPU: ``built`` is False with the reason.
    """
    ok, reason, trt = tensorrt_status()
    if not ok:
        return TensorRTResult(False, reason, precision=precision)
    import torch

    v = parse_version(trt.__version__)
    result = TensorRTResult(False, precision=precision, tensorrt_version=trt.__version__,
                            gpu=torch.cuda.get_device_name(0))
    if v < (8, 0):  # build_serialized_network and timing caches arrived in 8.0
        result.reason = f"TensorRT {trt.__version__} predates the builder API used here (8.0+): use the trtexec command"
        return result
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) if v < (10, 0) else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        result.reason = f"TensorRT {trt.__version__} could not parse {onnx_path}: {errors}"
        return result
    config = builder.create_builder_config()
    if hasattr(config, "set_memory_pool_limit"):  # TensorRT >= 8.4
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb * 2**20)
    else:
        config.max_workspace_size = workspace_mb * 2**20
    if v < (11, 0):
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            cache = Path(calibration_cache or Path(engine_path).with_suffix(".calib.cache"))
            if calibration_batches is not None or cache.exists():
                config.int8_calibrator = _entropy_calibrator(trt, list(calibration_batches or []), cache)
                result.calibration_cache = str(cache)
            else:
                result.notes.append("INT8 without calibration data: only valid for a Q/DQ (explicitly quantized) graph")
    profile = None
    if dynamic_batch is not None:
        profile = builder.create_optimization_profile()
        rest = tuple(input_shape[1:])
        lo, opt, hi = dynamic_batch
        profile.set_shape(network.get_input(0).name, (lo, *rest), (opt, *rest), (hi, *rest))
        config.add_optimization_profile(profile)
        if precision == "int8" and v < (11, 0) and result.calibration_cache:
            config.set_calibration_profile(profile)
    if dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(dla_core)
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if timing_cache:
        blob = Path(timing_cache).read_bytes() if Path(timing_cache).exists() else b""
        config.set_timing_cache(config.create_timing_cache(blob), False)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    result.build_s = time.perf_counter() - t0
    if serialized is None:
        result.reason = f"TensorRT {trt.__version__} failed to build the engine (see the TensorRT log above)"
        return result
    Path(engine_path).write_bytes(bytes(serialized))
    if timing_cache:
        Path(timing_cache).write_bytes(bytes(config.get_timing_cache().serialize()))
        result.timing_cache = timing_cache
    result.built, result.engine, result.engine_bytes = True, str(engine_path), Path(engine_path).stat().st_size
    result.notes.append(f"engine built for this machine's {result.gpu} with TensorRT {trt.__version__}; engines do not "
                        "move between GPU models or TensorRT versions: on the device, use the trtexec command")
    return result
