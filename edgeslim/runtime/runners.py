"""Runners: one interface over PyTorch eager/compiled, ONNX Runtime and TensorRT.

A runner owns one model ready to execute on one device with fixed inputs:

    runner.prepare()        load the model / build the session or engine (idempotent)
    runner.run_once()       one inference (may return before the device has finished)
    runner.sync()           wait for the device
    runner.time_once()      one timed inference in milliseconds (CUDA events on a GPU)
    runner.measure_memory() peak memory of loading and running the model, in bytes (None if unknowable)
    runner.output()         the first output as a numpy array (for parity checks)

The harness in :mod:`edgeslim.runtime.latency` times several runners interleaved.
"""
from __future__ import annotations

import copy
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["Runner", "TorchRunner", "OrtRunner", "TensorRTRunner", "ort_providers", "resolve_device",
           "runner_for", "RUNTIMES", "tensorrt_available", "ort_session_options"]

RUNTIMES = ("torch", "ort", "trt")


def _return_free_memory() -> None:
    """Hand memory that earlier work freed back to the OS (glibc keeps it otherwise), so that a model
    loaded next shows up as a rise in resident memory instead of quietly reusing those pages."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the rise may then be understated
        pass


class _PeakRSS:
    """Samples this process's resident memory in a background thread; ``peak`` is the highest reading."""

    def __init__(self, interval_s: float = 0.0005):
        self.interval_s = interval_s
        _return_free_memory()
        self.peak = self.baseline = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval_s)

    def __enter__(self) -> "_PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def rise(self) -> int:
        return max(0, self.peak - self.baseline)


class Runner:
    """Base class. Subclasses set ``runtime`` and implement ``_prepare`` and ``run_once``."""

    runtime = "base"

    def __init__(self, device: str = "cpu", batch: int = 1):
        self.device = device
        self.batch = batch
        self.memory_note = ""
        self._prepared = False

    # -- the interface -------------------------------------------------------------------------
    def prepare(self) -> "Runner":
        if not self._prepared:
            self._prepare()
            self._prepared = True
        return self

    def _prepare(self) -> None:
        raise NotImplementedError

    def run_once(self) -> Any:
        raise NotImplementedError

    def sync(self) -> None:
        """Wait until the device has finished the work queued so far (no-op on the CPU)."""

    def time_once(self) -> float:
        """One inference, wall clock from launch to completion, in milliseconds."""
        self.prepare()
        t0 = time.perf_counter()
        self.run_once()
        self.sync()
        return (time.perf_counter() - t0) * 1e3

    def output(self) -> np.ndarray:
        raise NotImplementedError

    def measure_memory(self, runs: int = 2) -> int | None:
        """Peak memory of preparing and running the model (bytes): on the CPU, the rise of this
        process's resident memory while the model is loaded and run (sampled in a thread)."""
        if self.device != "cpu":
            raise NotImplementedError(f"{type(self).__name__} cannot measure memory on {self.device}")
        if not os.path.exists("/proc/self/statm"):
            self.memory_note = "peak memory needs /proc (Linux); not measured"
            self.prepare()
            return None
        with _PeakRSS() as rss:
            self.prepare()
            for _ in range(runs):
                self.run_once()
            self.sync()
        self.memory_note = ("rise of the process's resident memory while loading and running the model "
                            "(includes allocator caches; approximate when other models are loaded)")
        return rss.rise

    def close(self) -> None:
        self._prepared = False

    def __enter__(self) -> "Runner":
        return self.prepare()

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "device": self.device, "batch": self.batch}


def _cuda_measure_memory(runner: Runner, runs: int) -> int:
    """Device-wide rise of used GPU memory while preparing and running (arenas and engines keep their peak)."""
    torch.cuda.synchronize()
    free_before, _ = torch.cuda.mem_get_info()
    runner.prepare()
    for _ in range(runs):
        runner.run_once()
    runner.sync()
    free_after, _ = torch.cuda.mem_get_info()
    runner.memory_note = "rise of used GPU memory (device-wide) while loading and running the model"
    return max(0, free_before - free_after)


# ---------------------------------------------------------------------------------------------
class TorchRunner(Runner):
    """PyTorch eager (or ``torch.compile``d) on the CPU or a CUDA device.

    The model is deep-copied before it is moved or compiled: the caller's module is never changed.
    """

    runtime = "torch"

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor], device: str = "cpu",
                 compile: bool | str = False):
        inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
        super().__init__(device, batch=int(inputs[0].shape[0]) if inputs and inputs[0].dim() else 1)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} needs CUDA, and torch sees no CUDA device on this host")
        self.model, self.inputs, self.compile = model, inputs, compile
        if compile:
            self.runtime = "torch-compile"

    def _prepare(self) -> None:
        model = copy.deepcopy(self.model).eval().to(self.device)
        self._inputs = tuple(x.to(self.device) for x in self.inputs)
        if self.compile:
            mode = self.compile if isinstance(self.compile, str) else None
            model = torch.compile(model, mode=mode)
        self._model = model
        if self.device.startswith("cuda"):
            self._start, self._end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.inference_mode():  # compile (if any) happens here, not in the first timed run
            self._model(*self._inputs)
        self.sync()

    def run_once(self):
        with torch.inference_mode():
            return self._model(*self._inputs)

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)

    def time_once(self) -> float:
        if not self.device.startswith("cuda"):
            return super().time_once()
        self.prepare()
        self._start.record()
        self.run_once()
        self._end.record()
        self._end.synchronize()
        return float(self._start.elapsed_time(self._end))

    def output(self) -> np.ndarray:
        out = self.prepare().run_once()
        out = out[0] if isinstance(out, (tuple, list)) else out
        return out.detach().float().cpu().numpy()

    def measure_memory(self, runs: int = 2) -> int | None:
        if not self.device.startswith("cuda"):
            return super().measure_memory(runs)
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        self.prepare()
        for _ in range(runs):
            self.run_once()
        self.sync()
        self.memory_note = "peak bytes held by PyTorch's CUDA allocator (weights + activations)"
        return max(0, torch.cuda.max_memory_allocated(self.device) - before)

    def close(self) -> None:
        self._model = None
        super().close()


# ---------------------------------------------------------------------------------------------
_ORT_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def ort_providers(device: str = "cpu") -> list[str]:
    """ONNX Runtime execution providers for a device kind (``cpu``, ``cuda``, ``tensorrt``), checked
    against what this onnxruntime build offers."""
    import onnxruntime as ort

    kind = "cuda" if device.startswith("cuda") else device
    if kind not in _ORT_PROVIDERS:
        raise ValueError(f"unknown ONNX Runtime device {device!r}; use one of {', '.join(_ORT_PROVIDERS)}")
    wanted, available = _ORT_PROVIDERS[kind], ort.get_available_providers()
    if wanted[0] not in available:
        raise RuntimeError(f"{wanted[0]} is not available in this onnxruntime build (available: {', '.join(available)}); "
                           "install onnxruntime-gpu on a CUDA machine (TensorRT EP also needs TensorRT)")
    return [p for p in wanted if p in available]


_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
               "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8,
               "tensor(int8)": np.int8, "tensor(bool)": np.bool_}


def ort_session_options(threads: int | None = None, allow_spinning: bool | None = True,
                        optimization: str = "all"):
    """ONNX Runtime session options as edgeslim times models (see :class:`OrtRunner` for why the
    workers spin only while a run is in progress). ``allow_spinning``: True spins only during a run,
    False never, None leaves ONNX Runtime's default (spinning on for a while after each run)."""
    import onnxruntime as ort

    levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
    if optimization not in levels:
        raise ValueError(f"optimization must be one of {', '.join(levels)} (got {optimization!r})")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = levels[optimization]
    if threads:
        opts.intra_op_num_threads = int(threads)
    if allow_spinning:
        opts.add_session_config_entry("session.force_spinning_stop", "1")
    elif allow_spinning is not None:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


class OrtRunner(Runner):
    """An ONNX model in ONNX Runtime.

    ``inputs``: arrays (or tensors) to feed, by position; by default random data shaped as the graph
    declares, with any dynamic dimension taken from ``input_shape`` (or 1).
    Worker threads spin while ``run`` is in progress and stop spinning as soon as it returns
    (``session.force_spinning_stop``). Spinning is ONNX Runtime's default: without it every node
    pays a wake-up hand-off, which costs small, pruned models most. Stopping at the end of the run
    keeps the idle workers of one session from stealing cores from another session timed
    interleaved with it. On 2 cores this reproduces the latency of a default session timed alone,
    where ``allow_spinning=False`` understated slim ResNet-50s' speed-ups by 3-13 %
    (``benchmarks/ort_threads.py``).

    Inputs and outputs are bound once (I/O binding) in the memory of the device the session runs on,
    as a deployed application keeps its buffers: a timed run then holds no per-call copy of the input
    and no output allocation. ``session.run`` with a feed dict pays both on every call, a fixed cost
    that weighs most on small, slim models and so understates their speed-up.
    """

    runtime = "ort"

    def __init__(self, model_path: str | os.PathLike, inputs: Sequence[Any] | None = None,
                 input_shape: Sequence[int] | None = None, device: str = "cpu", providers: Sequence[str] | None = None,
                 threads: int | None = None, allow_spinning: bool = True, optimization: str = "all", seed: int = 0):
        super().__init__(device)
        self.path = str(model_path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"ONNX model {self.path!r} does not exist")
        self.providers = list(providers) if providers else None
        self.threads, self.allow_spinning, self.optimization = threads, allow_spinning, optimization
        self._given_inputs = [np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x) for x in inputs] \
            if inputs is not None else None
        self.input_shape, self.seed = tuple(input_shape) if input_shape else None, seed

    def _session_options(self):
        return ort_session_options(self.threads, self.allow_spinning, self.optimization)

    def _feeds(self, session) -> dict[str, np.ndarray]:
        graph_inputs = session.get_inputs()
        if self._given_inputs is not None:
            if len(self._given_inputs) != len(graph_inputs):
                raise ValueError(f"{self.path} takes {len(graph_inputs)} inputs, {len(self._given_inputs)} were given")
            return {i.name: x for i, x in zip(graph_inputs, self._given_inputs)}
        rng = np.random.default_rng(self.seed)
        feeds = {}
        for k, spec in enumerate(graph_inputs):
            shape = []
            for d, dim in enumerate(spec.shape):
                if isinstance(dim, int) and dim > 0:
                    shape.append(dim)
                elif k == 0 and self.input_shape and d < len(self.input_shape):
                    shape.append(int(self.input_shape[d]))
                else:
                    shape.append(1)
            dtype = _ORT_DTYPES.get(spec.type, np.float32)
            feeds[spec.name] = (rng.standard_normal(shape).astype(dtype) if np.issubdtype(dtype, np.floating)
                                else np.zeros(shape, dtype=dtype))
        return feeds

    def _prepare(self) -> None:
        import onnxruntime as ort

        providers = self.providers or ort_providers(self.device)
        self._session = ort.InferenceSession(self.path, self._session_options(), providers=providers)
        self._feed = self._feeds(self._session)
        first = next(iter(self._feed.values()))
        self.batch = int(first.shape[0]) if first.ndim else 1
        self._bind(ort)

    def _bind(self, ort) -> None:
        """Inputs copied to the session's device once; outputs allocated by the first run (which also
        sizes the arena and picks kernels), then bound so later runs write into the same buffers."""
        where = "cpu" if self.device == "cpu" else "cuda"  # the CUDA and TensorRT providers read CUDA memory
        index = int(self.device.split(":")[1]) if ":" in self.device else 0
        binding = self._session.io_binding()
        self._inputs = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(x), where, index)
                        for x in self._feed.values()]
        for name, value in zip(self._feed, self._inputs):
            binding.bind_ortvalue_input(name, value)
        names = [o.name for o in self._session.get_outputs()]
        for name in names:
            binding.bind_output(name, where, index)
        self._session.run_with_iobinding(binding)
        self._outputs = binding.get_outputs()
        for name, value in zip(names, self._outputs):
            binding.bind_ortvalue_output(name, value)
        self._binding = binding

    def run_once(self):
        self._session.run_with_iobinding(self._binding)
        return self._outputs

    def output(self) -> np.ndarray:
        self.prepare().run_once()
        return np.asarray(self._binding.copy_outputs_to_cpu()[0])

    def measure_memory(self, runs: int = 2) -> int | None:
        if self.device == "cpu":
            return super().measure_memory(runs)
        if not torch.cuda.is_available():
            self.prepare()
            self.memory_note = "GPU memory not measured: torch sees no CUDA device to query"
            return None
        return _cuda_measure_memory(self, runs)

    def close(self) -> None:
        self._session = self._binding = self._inputs = self._outputs = None
        super().close()

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        if self._prepared:
            d["providers"] = self._session.get_providers()
        return d


# ---------------------------------------------------------------------------------------------
def tensorrt_available() -> tuple[bool, str]:
    """(True, version) where ``import tensorrt`` works and a CUDA device is visible, else (False, why)."""
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or a broken install raising OSError
        return False, f"TensorRT is not installed on this host (import tensorrt failed: {exc})"
    if not torch.cuda.is_available():
        return False, f"TensorRT {trt.__version__} is installed but torch sees no CUDA device"
    return True, trt.__version__


_TRT_ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


class TensorRTRunner(Runner):
    """A serialized TensorRT engine (``.engine``/``.plan``/``.trt``) executed with the name-based I/O API
    of TensorRT 8.5 and later (``set_tensor_address`` + ``execute_async_v3``); buffers are torch CUDA
    tensors, so no pycuda is needed. An ``.onnx`` file is first built into an engine by
    :func:`edgeslim.export.tensorrt.build_engine`."""

    runtime = "trt"

    def __init__(self, engine_path: str | os.PathLike, input_shape: Sequence[int] | None = None, device: str = "cuda",
                 fp16: bool = False):
        super().__init__(device)
        ok, why = tensorrt_available()
        if not ok:
            raise RuntimeError(f"{why}; build and time the engine on the device itself "
                               "(the trtexec command printed by `edgeslim export`), or use --runtime ort")
        self.path, self.input_shape, self.fp16 = str(engine_path), tuple(input_shape) if input_shape else None, fp16
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"TensorRT engine or ONNX file {self.path!r} does not exist")

    def _engine_bytes(self) -> bytes:
        if self.path.endswith(_TRT_ENGINE_SUFFIXES):
            return Path(self.path).read_bytes()
        if self.path.endswith(".onnx"):
            try:
                from ..export.tensorrt import build_engine
            except ImportError as exc:
                raise RuntimeError("building a TensorRT engine from ONNX needs edgeslim.export.tensorrt.build_engine "
                                   f"({exc}); build it with trtexec and pass the .engine file") from None
            return bytes(build_engine(self.path, fp16=self.fp16))
        raise ValueError(f"{self.path}: expected a TensorRT engine ({', '.join(_TRT_ENGINE_SUFFIXES)}) or an .onnx file")

    def _prepare(self) -> None:
        import tensorrt as trt

        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self._engine_bytes())
        if self._engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {self.path} (built by another TensorRT version or GPU?)")
        self._context = self._engine.create_execution_context()
        self._stream = torch.cuda.Stream()
        self._buffers: dict[str, torch.Tensor] = {}
        self._outputs: list[str] = []
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        for name in names:  # inputs first: their shapes decide the outputs'
            if self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                shape = list(self._engine.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    given = list(self.input_shape or [])
                    shape = [given[i] if d < 0 and i < len(given) else (1 if d < 0 else d) for i, d in enumerate(shape)]
                    self._context.set_input_shape(name, shape)
        for name in names:
            shape = tuple(self._context.get_tensor_shape(name))
            dtype = torch.from_numpy(np.zeros(0, dtype=trt.nptype(self._engine.get_tensor_dtype(name)))).dtype
            buf = (torch.randn(shape, device=self.device).to(dtype) if dtype.is_floating_point
                   else torch.zeros(shape, dtype=dtype, device=self.device))
            self._buffers[name] = buf
            self._context.set_tensor_address(name, buf.data_ptr())
            if self._engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
                self._outputs.append(name)
            elif buf.dim():
                self.batch = int(buf.shape[0])
        self._start, self._end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        self.run_once()
        self.sync()

    def run_once(self):
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")

    def sync(self) -> None:
        self._stream.synchronize()

    def time_once(self) -> float:
        self.prepare()
        self._start.record(self._stream)
        self.run_once()
        self._end.record(self._stream)
        self._end.synchronize()
        return float(self._start.elapsed_time(self._end))

    def output(self) -> np.ndarray:
        self.prepare().run_once()
        self.sync()
        return self._buffers[self._outputs[0]].float().cpu().numpy()

    def measure_memory(self, runs: int = 2) -> int | None:
        return _cuda_measure_memory(self, runs)

    def close(self) -> None:
        self._context = self._engine = None
        super().close()


# ---------------------------------------------------------------------------------------------
def resolve_device(name: str | None) -> tuple[str, Any]:
    """``--device`` -> (where to run: "cpu" | "cuda", the device profile or None).

    ``cpu``/``cuda``/``cuda:N`` are taken literally; any other name is a device profile
    (``edgeslim devices``): CPU profiles run on the CPU, GPU and Jetson profiles on CUDA.
    """
    if name in (None, "", "cpu"):
        return "cpu", _profile_or_none("cpu")
    if name.startswith("cuda"):
        where, profile = name, None
    else:
        try:
            from ..devices import get_device
        except ImportError:
            raise ValueError(f"unknown device {name!r}: device profiles are not available in this build; "
                             "use cpu or cuda") from None
        profile = get_device(name)
        where = "cpu" if getattr(profile, "kind", "cpu") == "cpu" else "cuda"
    if where.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} is a GPU, and this host has no CUDA device: run the benchmark on the device "
                           "itself, or remotely with --remote USER@HOST")
    return where, profile


def _profile_or_none(name: str):
    try:
        from ..devices import get_device

        return get_device(name)
    except Exception:  # profiles not built yet, or no "cpu" profile: a plain CPU run needs none
        return None


def runner_for(model: str | os.PathLike | nn.Module, runtime: str = "ort", device: str | None = None,
               input_shape: Sequence[int] | None = None, workdir: str | os.PathLike | None = None,
               weights: str | None = None, num_classes: int | None = None, opset: int | None = None,
               **options: Any) -> Runner:
    """A runner for any MODEL spelling of INTERFACE.md (checkpoint, zoo/torchvision/file spelling,
    ``model.onnx``, TensorRT engine) or an ``nn.Module`` (then ``input_shape`` is required).

    For ``ort`` a PyTorch model is exported to ONNX first (parity-checked against PyTorch) in
    ``workdir`` (a temporary folder by default), with the device profile's highest opset.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    if runtime == "trt":
        ok, why = tensorrt_available()
        if not ok:
            raise RuntimeError(f"{why}; build and time the engine on the device itself (the trtexec command "
                               "printed by `edgeslim export`), or use --runtime ort")
        device = device or "cuda"
    where, profile = resolve_device(device)
    path = str(model) if isinstance(model, (str, os.PathLike)) else None
    is_onnx = bool(path and path.endswith(".onnx"))
    is_engine = bool(path and path.endswith(_TRT_ENGINE_SUFFIXES))
    if is_onnx or is_engine:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model file {path!r} does not exist")
        if runtime == "torch":
            raise ValueError(f"{path} is an exported model; PyTorch cannot run it. Use --runtime ort (or trt), "
                             "or pass the checkpoint / model spelling")
        if runtime == "ort":
            if is_engine:
                raise ValueError(f"{path} is a TensorRT engine; time it with --runtime trt")
            return OrtRunner(path, input_shape=input_shape, device=where, **options)
        return TensorRTRunner(path, input_shape=input_shape, device=where, **options)

    if isinstance(model, nn.Module):
        if input_shape is None:
            raise ValueError("a PyTorch module needs input_shape, e.g. (1, 3, 224, 224)")
        module, shape = model, tuple(input_shape)
    else:
        from ..models import load_model

        loaded = load_model(path, weights=weights, num_classes=num_classes, input_shape=input_shape)
        module, shape = loaded.model, tuple(loaded.example_input().shape)
    example = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    if runtime == "torch":
        return TorchRunner(module, example, device=where, **options)
    folder = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="edgeslim-bench-"))
    from ..export import export_onnx

    opset = opset or min(17, int(getattr(profile, "max_onnx_opset", 17) or 17))
    exported = export_onnx(module, example, folder / "model.onnx", opset=opset)
    cls = OrtRunner if runtime == "ort" else TensorRTRunner
    runner = cls(exported.path, input_shape=shape, device=where, **options)
    runner.exported = exported  # the parity check travels with the runner (bench reports it)
    return runner
