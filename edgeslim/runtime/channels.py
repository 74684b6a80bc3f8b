"""Runtime-aware channel counts: measure how a channel group's latency moves with its width on a
runtime and device, cache what was measured, and pick widths the runtime executes fast.

Why: MACs fall smoothly with every removed channel, latency does not. ONNX Runtime's CPU kernels,
for instance, run a convolution in a blocked channel layout (NCHWc, 16 channels a block with
AVX-512, 8 with AVX2) only when its input channels are a whole number of blocks; any other width
falls back to a slower path plus layout conversions. A popular pruning library's MobileNetV2 at
ratio 0.3 had 1.94x fewer MACs and ran slower than dense here for that reason.

How: a channel group (the channels that producers write and consumers read together, see
``edgeslim.trace``) is timed in isolation as a *probe*: a small network made of the group's
producer layers (output width ``n``), its depthwise layers (width ``n``) and its consumer layers
(input width ``n``), every other dimension as in the model. The probe is timed on the target
runtime for the candidate widths at and above the engine's count, all candidates of one group
interleaved in one process, and the cheapest is chosen (by default the widest among those within
``tolerance`` of the fastest: channels the runtime gives for free). Measurements are cached per device and runtime in
``~/.cache/edgeslim/latency/<device>-<runtime>.json`` keyed by the probe's signature.

``DeviceRounding`` is the ``round_to`` callable the engine takes: ``round_to(group, n) -> n``.
``LatencyModel`` estimates a whole model's latency for given group widths from the same probes.
"""
from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import os
import platform
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LayerSpec", "GroupSpec", "LatencyTable", "DeviceRounding", "LatencyModel", "record_layers",
           "candidate_widths", "default_cache_dir", "probe_latency", "PROBE_RUNS"]

TABLE_FORMAT = 2  # 2: entries hold batches of widths measured together
# Bumped whenever the probe network or the way it is timed changes, so that old measurements are not reused.
PROBE_VERSION = 7  # 7: probes timed in blocks of runs in a row (latency.BLOCK)


# ---------------------------------------------------------------------------------------------
# What a group touches
@dataclass(frozen=True)
class LayerSpec:
    """One convolution or linear layer as it runs inside the model (dense widths)."""

    kind: str                          # "conv" | "linear"
    in_channels: int                   # conv: input channels; linear: in_features
    out_channels: int                  # conv: output channels; linear: out_features
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    bias: bool = False
    input_hw: tuple[int, int] = (1, 1)   # spatial size of the input (1x1 for linear)

    @classmethod
    def from_module(cls, module: nn.Module, input_shape: Sequence[int]) -> "LayerSpec":
        if isinstance(module, nn.Conv2d):
            if isinstance(module.padding, str):
                raise ValueError(f"{module}: string padding is not supported by the latency probes")
            return cls("conv", module.in_channels, module.out_channels, tuple(module.kernel_size), tuple(module.stride),
                        tuple(module.padding), tuple(module.dilation), module.groups, module.bias is not None,
                        tuple(int(v) for v in input_shape[-2:]))
        if isinstance(module, nn.Linear):
            return cls("linear", module.in_features, module.out_features, bias=module.bias is not None)
        raise TypeError(f"latency probes understand Conv2d and Linear layers, not {type(module).__name__}")

    @property
    def depthwise(self) -> bool:
        return self.kind == "conv" and self.groups > 1 and self.groups == self.in_channels == self.out_channels

    def with_widths(self, in_channels: int | None = None, out_channels: int | None = None) -> "LayerSpec":
        cin = self.in_channels if in_channels is None else in_channels
        cout = self.out_channels if out_channels is None else out_channels
        # A depthwise layer stays depthwise; another grouped layer keeps the largest group count that fits.
        groups = cin if self.depthwise else math.gcd(self.groups, cin, cout)
        return replace(self, in_channels=cin, out_channels=cout, groups=groups)

    def output_hw(self) -> tuple[int, int]:
        if self.kind == "linear":
            return (1, 1)
        return tuple((self.input_hw[i] + 2 * self.padding[i] - self.dilation[i] * (self.kernel[i] - 1) - 1)
                     // self.stride[i] + 1 for i in range(2))

    def build(self) -> nn.Module:
        if self.kind == "linear":
            return nn.Linear(self.in_channels, self.out_channels, bias=self.bias)
        return nn.Conv2d(self.in_channels, self.out_channels, self.kernel, self.stride, self.padding, self.dilation,
                         self.groups, bias=self.bias)

    def macs(self) -> int:
        h, w = self.output_hw()
        per_out = self.in_channels // self.groups * self.kernel[0] * self.kernel[1]
        return self.out_channels * per_out * h * w


def record_layers(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor]) -> dict[str, LayerSpec]:
    """Every Conv2d/Linear of ``model`` with the input shape it sees on ``example_inputs`` (one forward
    pass with hooks, on a copy-free no-grad run; the model is left as it was)."""
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    specs: dict[str, LayerSpec] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            def hook(mod, args, _name=name):
                if _name not in specs:
                    specs[_name] = LayerSpec.from_module(mod, args[0].shape)
            hooks.append(module.register_forward_pre_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(*inputs)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return specs


@dataclass(frozen=True)
class GroupSpec:
    """The layers whose cost depends on one channel group's width ``size``.

    producers: layers whose output channels are the group (conv / linear, not depthwise)
    passthrough: depthwise convolutions inside the group (their input and output are the group)
    consumers: layers whose input channels are (or, for a linear layer after a flatten, contain) the group
    Identical layers (the same shapes, e.g. the blocks of one ResNet stage) are listed once;
    ``repeats`` says how often each occurs (producers, then passthrough, then consumers). The probe
    times each distinct layer once, which decides widths as well and costs a fraction of the time.
    """

    size: int
    producers: tuple[LayerSpec, ...]
    passthrough: tuple[LayerSpec, ...] = ()
    consumers: tuple[LayerSpec, ...] = ()
    repeats: tuple[int, ...] = ()

    @classmethod
    def from_modules(cls, layers: dict[str, LayerSpec], size: int, producers: Iterable[str],
                     consumers: Iterable[str]) -> "GroupSpec":
        """Build from module paths (as ``ChannelGroup.producer_modules()`` / ``consumer_modules()`` give them),
        in execution order of ``layers`` (from :func:`record_layers`)."""
        producers, consumers = set(producers), set(consumers)
        missing = sorted((producers | consumers) - set(layers))
        if missing:
            raise ValueError(f"layers {missing} did not run on the example input (or are not Conv2d/Linear)")
        order = list(layers)
        roles: dict[str, dict[LayerSpec, int]] = {"prod": {}, "thru": {}, "cons": {}}
        for path in sorted(producers | consumers, key=order.index):
            spec = layers[path]
            if spec.depthwise:  # its input and output channels are the same group, however it is listed
                role = "thru"
            elif path in producers and path in consumers:
                raise ValueError(f"{path} both produces and consumes a group but is not depthwise")
            else:
                role = "prod" if path in producers else "cons"
            roles[role][spec] = roles[role].get(spec, 0) + 1
        if not roles["prod"] and not roles["thru"]:
            raise ValueError("a channel group needs at least one producer layer")
        repeats = tuple(c for r in ("prod", "thru", "cons") for c in roles[r].values())
        return cls(size, tuple(roles["prod"]), tuple(roles["thru"]), tuple(roles["cons"]), repeats)

    @classmethod
    def from_group(cls, layers: dict[str, LayerSpec], group: Any) -> "GroupSpec":
        """From an engine ``ChannelGroup`` (``.size``, ``.producer_modules()``, ``.consumer_modules()``)."""
        return cls.from_modules(layers, int(group.size), group.producer_modules(), group.consumer_modules())

    def signature(self) -> str:
        """A stable key for the probe: groups with the same distinct layers share measurements."""
        d = asdict(self)
        d.pop("repeats")
        text = json.dumps({"probe": PROBE_VERSION, **d}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def probe(self, n: int) -> "GroupProbe":
        return GroupProbe(self, n)

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        inputs = [torch.randn(1, p.in_channels, *p.input_hw) if p.kind == "conv" else torch.randn(1, p.in_channels)
                  for p in self.producers]
        if not self.producers:  # a group that starts at a depthwise layer reads the model's tensor of width n
            inputs.append(torch.randn(1, self.size, *self.passthrough[0].input_hw))
        return tuple(inputs)

    def macs(self, n: int, distinct: bool = False) -> int:
        """MACs of the group's layers at width ``n`` (each distinct layer once with ``distinct``)."""
        layers = GroupProbe.layer_specs(self, n)
        reps = [1] * len(layers) if distinct or not self.repeats else self.repeats
        return sum(r * layer.macs() for r, layer in zip(reps, layers))

    def repeat_scale(self) -> float:
        """How much more the whole group costs than its probe (MACs of all layers / of the distinct ones)."""
        distinct = self.macs(self.size, distinct=True)
        return self.macs(self.size) / distinct if distinct else 1.0


class GroupProbe(nn.Module):
    """The group's layers at width ``n``: producers (each on its own input, summed as a residual add
    would), then depthwise layers, then every consumer on the result. ReLUs mimic the fused
    activations of real networks; resolution changes between producer and consumer (pooling) are
    mimicked by adaptive average pooling.

    Each convolutional consumer is followed by a 1x1 max-pool, a near-free op that runtimes with
    blocked layouts keep in the blocked layout: in the model, a consumer's output flows on into
    further layers, so a width that forces the consumer out of the blocked layout must pay for
    converting back, exactly as it does in the model, and not be credited for skipping a
    conversion at the probe's exit that the model never makes."""

    def __init__(self, spec: GroupSpec, n: int):
        super().__init__()
        if not 1 <= n <= spec.size:
            raise ValueError(f"width {n} outside 1..{spec.size}")
        self.spec, self.n = spec, n
        prod, thru, cons = self.layer_specs(spec, n, split=True)
        self.producers = nn.ModuleList(p.build() for p in prod)
        self.passthrough = nn.ModuleList(t.build() for t in thru)
        self.consumers = nn.ModuleList(c.build() for c in cons)
        self._consumer_specs = cons
        self._input_width = n if not prod else None

    @staticmethod
    def layer_specs(spec: GroupSpec, n: int, split: bool = False):
        prod = [p.with_widths(out_channels=n) for p in spec.producers]
        thru = [t.with_widths(n, n) for t in spec.passthrough]
        cons = []
        for c in spec.consumers:
            if c.kind == "linear" and c.in_channels != spec.size:
                # A linear layer after a flatten reads every spatial position of every channel.
                per_channel = c.in_channels // spec.size
                cons.append(c.with_widths(in_channels=n * per_channel))
            else:
                cons.append(c.with_widths(in_channels=n))
        return (prod, thru, cons) if split else [*prod, *thru, *cons]

    def forward(self, *xs: torch.Tensor):
        if self.producers:
            outs = [F.relu(p(x)) for p, x in zip(self.producers, xs)]
            # Producers coupled by a residual add share one resolution; where the model pools in
            # between (a stem before its max-pool), meet at the smallest.
            hw = min((tuple(o.shape[-2:]) for o in outs if o.dim() == 4), default=None)
            t = _resize(outs[0], hw)
            for o in outs[1:]:
                t = t + _resize(o, hw)
        else:
            t = xs[0]
        for layer in self.passthrough:
            t = F.relu(layer(t))
        results = []
        for layer, spec in zip(self.consumers, self._consumer_specs):
            x = t
            if spec.kind == "conv":
                x = _resize(x[:, :, None, None] if x.dim() == 2 else x, spec.input_hw)
                results.append(F.max_pool2d(layer(x), 1))
                continue
            if x.dim() == 4:  # the model pools or flattens before a linear layer
                per_channel = spec.in_channels // self.n
                if per_channel == 1:
                    x = F.adaptive_avg_pool2d(x, 1).flatten(1)  # global pooling, as classifiers do
                elif x.shape[-2] * x.shape[-1] == per_channel:
                    x = x.flatten(1)
                else:
                    x = F.adaptive_avg_pool2d(x, 1).flatten(1).repeat(1, per_channel)
            results.append(layer(x))
        return tuple(results) if results else t


def _resize(x: torch.Tensor, hw: tuple[int, int] | None) -> torch.Tensor:
    """``x`` at spatial size ``hw``: average pooling when it divides evenly (what models do between
    stages), nearest resizing otherwise; the cost is small next to the convolutions either way."""
    if hw is None or x.dim() != 4 or tuple(x.shape[-2:]) == tuple(hw):
        return x
    h, w = x.shape[-2:]
    if h % hw[0] == 0 and w % hw[1] == 0:
        return F.avg_pool2d(x, (h // hw[0], w // hw[1]))
    return F.interpolate(x, size=tuple(hw), mode="nearest")


# ---------------------------------------------------------------------------------------------
# Measuring and caching
def default_cache_dir() -> Path:
    root = os.environ.get("EDGESLIM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "edgeslim")
    return Path(root) / "latency"


def _host_fingerprint(runtime: str, threads: int | None) -> dict[str, Any]:
    """What makes a measurement valid: the CPU, the runtime build, the thread count."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    version = torch.__version__
    if runtime == "ort":
        import onnxruntime

        version = onnxruntime.__version__
    return {"cpu": cpu, "cores": os.cpu_count(), "runtime_version": version, "threads": threads,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


class LatencyTable:
    """Probe latencies for one device and runtime, kept in a JSON file as
    ``{signature: [batch, ...]}``, each batch ``{width: ms}`` timed together, interleaved.

    Latencies are only ever compared within one batch: the machine's speed can change between two
    batches (on a shared host a neighbour can take a core for minutes), and a difference across
    batches measured in different states is noise, not cost. A file written on another CPU, runtime
    version or thread count is ignored (and replaced), so a table never mixes machines.
    """

    def __init__(self, device: str = "cpu", runtime: str = "ort", path: str | os.PathLike | None = None,
                 threads: int | None = None):
        self.device, self.runtime, self.threads = device, runtime, threads
        self.path = Path(path) if path else default_cache_dir() / f"{device}-{runtime}.json"
        self.host = _host_fingerprint(runtime, threads)
        self.entries: dict[str, list[dict[str, float]]] = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
            except (OSError, json.JSONDecodeError):
                data = {}
            if data.get("format") == TABLE_FORMAT and data.get("host") == self.host:
                self.entries = {k: [dict(batch) for batch in v] for k, v in data.get("entries", {}).items()}

    _open: dict[tuple[str, str], "LatencyTable"] = {}

    @classmethod
    def open(cls, device: str = "cpu", runtime: str = "ort", path: str | os.PathLike | None = None,
             threads: int | None = None) -> "LatencyTable":
        """The process-wide table for this file, so that every user in one process shares measurements."""
        resolved = Path(path) if path else default_cache_dir() / f"{device}-{runtime}.json"
        key = (str(resolved), threads)
        if key not in cls._open:
            cls._open[key] = cls(device, runtime, resolved, threads)
        return cls._open[key]

    def get(self, signature: str, widths: Iterable[int]) -> dict[int, float] | None:
        """Cached latencies for all of ``widths`` from one batch (the latest that has them all), or
        None when no batch does."""
        for batch in reversed(self.entries.get(signature, [])):
            if all(str(n) in batch for n in widths):
                return {n: batch[str(n)] for n in widths}
        return None

    def put(self, signature: str, measured: dict[int, float]) -> None:
        """Add one batch of widths timed together."""
        self.entries.setdefault(signature, []).append({str(n): float(ms) for n, ms in measured.items()})

    def save(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"format": TABLE_FORMAT, "device": self.device, "runtime": self.runtime,
                                   "host": self.host, "entries": self.entries}, indent=1, sort_keys=True))
        os.replace(tmp, self.path)
        return self.path


class OnnxProbe:
    """A group's probe exported to ONNX once, at full width; a narrower width is the same graph with
    the group's channels sliced off the weights (no re-export, which would dominate probing time)."""

    def __init__(self, spec: GroupSpec):
        import onnx

        self.spec = spec
        probe = spec.probe(spec.size).eval()
        self.inputs = spec.example_inputs()
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(probe, self.inputs, buf, opset_version=17, dynamo=False)
        self.proto = onnx.load_from_string(buf.getvalue())
        # initializer -> (axis carrying the group's channels, entries per channel along it)
        self.slices: dict[str, tuple[int, int]] = {}
        for name, _ in probe.named_parameters():
            role, index, kind = name.split(".")
            if role in ("producers", "passthrough"):
                self.slices[name] = (0, 1)
            elif kind == "weight":
                layer = spec.consumers[int(index)]
                self.slices[name] = (1, layer.in_channels // spec.size if layer.kind == "linear" else 1)
        names = {i.name for i in self.proto.graph.initializer}
        if not set(self.slices) <= names:
            raise RuntimeError(f"probe export renamed parameters: {sorted(set(self.slices) - names)}")
        self.depthwise_nodes = [node.name for node in self.proto.graph.node
                                if node.op_type == "Conv" and node.input[1].startswith("passthrough.")]

    def model(self, n: int) -> bytes:
        import onnx
        from onnx import helper, numpy_helper

        proto = onnx.ModelProto()
        proto.CopyFrom(self.proto)
        graph = proto.graph
        for k, init in enumerate(graph.initializer):
            if init.name in self.slices:
                axis, per = self.slices[init.name]
                array = numpy_helper.to_array(init).take(range(n * per), axis=axis)
                graph.initializer[k].CopyFrom(numpy_helper.from_array(array, init.name))
        for node in graph.node:
            if node.name in self.depthwise_nodes:
                for attr in node.attribute:
                    if attr.name == "group":
                        attr.i = n
        del graph.value_info[:]  # shapes recorded at full width; the runtime infers them again
        outputs = [helper.make_tensor_value_info(o.name, o.type.tensor_type.elem_type, None) for o in graph.output]
        del graph.output[:]
        graph.output.extend(outputs)
        return proto.SerializeToString()


_TEMPLATES: dict[str, OnnxProbe] = {}


def _onnx_probe(spec: GroupSpec) -> OnnxProbe:
    sig = spec.signature()
    if sig not in _TEMPLATES:
        if len(_TEMPLATES) >= 4:  # full-width probes can be large (a VGG classifier): keep a few
            _TEMPLATES.pop(next(iter(_TEMPLATES)))
        _TEMPLATES[sig] = OnnxProbe(spec)
    return _TEMPLATES[sig]


def _probe_runner(spec: GroupSpec, n: int, runtime: str, device: str, threads: int | None):
    from .runners import OrtRunner, TorchRunner

    if runtime == "torch":
        return TorchRunner(spec.probe(n).eval(), spec.example_inputs(), device=device)
    if runtime != "ort":
        raise ValueError(f"latency probes run on torch or ort, not {runtime!r}")
    template = _onnx_probe(spec)
    path = _write_temp_onnx(template.model(n))
    runner = OrtRunner(path, inputs=[x.numpy() for x in template.inputs], device=device, threads=threads)
    runner._temp_path = path
    return runner


def _write_temp_onnx(data: bytes) -> str:
    import tempfile

    fd, path = tempfile.mkstemp(suffix=".onnx", prefix="edgeslim-probe-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


# Timed runs per width when probing a group. The widths and the latency allocation are only as good as
# these timings: with 20 runs, benchmarks/speedup.py --threads 1 met "speed-up >= 0.9 x MACs
# reduction" in 8 of 12 cells; with 60, in 10 and 11 of 12 (two runs), for 3x the probing time.
PROBE_RUNS = 60


def probe_latency(spec: GroupSpec, widths: Sequence[int], runtime: str = "ort", device: str = "cpu",
                  runs: int = PROBE_RUNS, warmup: int = 3, threads: int | None = None, quantile: float = 10) -> dict[int, float]:
    """Latency (ms) of the group's probe at each width, all widths interleaved in one process.

    The statistic is a low percentile (``quantile``, default the 10th): on a busy machine other
    processes only ever add time, so the fast end of the distribution is the probe's own cost, and
    interleaving exposes every width to the same interference.
    """
    from .latency import runner_quantiles

    runners = {n: _probe_runner(spec, n, runtime, device, threads) for n in sorted(set(widths))}
    try:
        return runner_quantiles(runners, runs, warmup, quantile)
    finally:
        for r in runners.values():
            if getattr(r, "_temp_path", None):
                os.unlink(r._temp_path)


def candidate_widths(n: int, size: int, alignments: Sequence[int] = (8, 16, 32)) -> list[int]:
    """The widths from ``n`` up to the next multiple of the largest alignment that are multiples of the
    smallest one, capped at ``size``, plus the full ``size`` when it is that close (always when no
    aligned width fits). ``n`` itself only when it is aligned: a probe times a group among dense
    neighbours and misses what an unaligned width costs beside narrow ones in the slim model."""
    if not 1 <= n <= size:
        raise ValueError(f"channel count {n} outside 1..{size}")
    step, top = min(alignments), min(size, -(-n // max(alignments)) * max(alignments))
    widths = {m for m in range(n, top + 1) if m % step == 0}
    if size - n <= max(alignments) or not widths:
        widths.add(size)
    return sorted(widths)


# ---------------------------------------------------------------------------------------------
class DeviceRounding:
    """``round_to`` for the engine: ``rounding(group, n)`` -> the width at or above ``n`` that the
    runtime executes fastest, measured (and cached) with the group's probe.

    Candidates are the multiples of the smallest alignment from ``n`` up to the next multiple of the
    largest one, and the whole group when it is that close (see :func:`candidate_widths`). Every
    decision is memoised, so the engine's search, which asks about many counts, needs few
    measurements. :meth:`coarser` gives the same measurements choosing among multiples of twice the
    smallest alignment (``prune(allocate="measured")`` tries both).

    ``prefer``: among candidates within ``tolerance`` of the fastest, ``"more"`` (default) keeps the
    most channels, since the runtime gives them for free and the engine's budget then takes channels
    where they do cost time; ``"fewer"`` keeps the fewest (smallest MACs and parameters).
    """

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor], runtime: str = "ort",
                 device: str = "cpu", table: LatencyTable | None = None, alignments: Sequence[int] = (8, 16, 32),
                 tolerance: float = 0.02, prefer: str = "more", runs: int = PROBE_RUNS, warmup: int = 3,
                 threads: int | None = None, progress: bool = False):
        if prefer not in ("more", "fewer"):
            raise ValueError(f"prefer must be 'more' or 'fewer', not {prefer!r}")
        self.layers = record_layers(model, example_inputs)
        self.runtime, self.device, self.threads = runtime, device, threads
        self.table = table or LatencyTable.open(device=_device_name(device), runtime=runtime, threads=threads)
        self.alignments, self.tolerance, self.prefer = tuple(sorted(alignments)), tolerance, prefer
        self.runs, self.warmup, self.progress = runs, warmup, progress
        self.decisions: dict[str, dict[str, Any]] = {}
        self._specs: dict[str, GroupSpec] = {}
        self._memo: dict[tuple[str, int], tuple[int, dict[int, float]]] = {}

    def coarser(self) -> "DeviceRounding":
        """This rounding with the smallest alignment doubled ((8, 16, 32) -> (16, 32)), sharing its
        probes. Why both: a probe times a group among dense neighbours; in the slim model a width
        that is not a whole number of the runtime's channel blocks (16 with AVX-512) can cost layout
        conversions beside narrow neighbours that the probe never sees (ResNet-50 on ORT), while
        small groups lose the finer choice (MobileNetV2's 24-channel stages)."""
        step = 2 * self.alignments[0]
        other = copy.copy(self)
        other.alignments = tuple(sorted({step} | {a for a in self.alignments if a > step}))
        other.decisions, other._memo = {}, {}
        return other

    def spec(self, group: Any) -> GroupSpec:
        key = str(getattr(group, "id", id(group)))
        if key not in self._specs:
            self._specs[key] = GroupSpec.from_group(self.layers, group)
        return self._specs[key]

    def latencies(self, spec: GroupSpec, widths: Iterable[int]) -> dict[int, float]:
        """Latency of ``spec`` at ``widths``, from the table or measured now (all together, so that
        they are compared under the same machine noise) and cached."""
        widths = sorted(set(widths))
        sig = spec.signature()
        cached = self.table.get(sig, widths)
        if cached is not None:
            return cached
        measured = probe_latency(spec, widths, self.runtime, self.device, self.runs, self.warmup, self.threads)
        self.table.put(sig, measured)
        self.table.save()
        return measured

    def timed_as(self, w: int, size: int) -> int:
        """The width whose measurement stands for ``w``: itself when aligned (or the full group),
        else its bucket's representative."""
        step = self.alignments[0]
        if w % step == 0 or w == size:
            return w
        return min(size, -(-w // step) * step) - 1

    def choose(self, spec: GroupSpec, n: int) -> tuple[int, dict[int, float]]:
        key = (spec.signature(), n)
        if key not in self._memo:
            widths = candidate_widths(n, spec.size, self.alignments)
            if len(widths) == 1:
                self._memo[key] = (widths[0], {})
            else:
                lat = self.latencies(spec, widths)
                cost = {w: lat[w] for w in widths}
                best = min(cost.values())
                fast = [w for w in widths if cost[w] <= best * (1 + self.tolerance)]
                self._memo[key] = (max(fast) if self.prefer == "more" else min(fast), cost)
        return self._memo[key]

    def channel_cost(self, group: Any, per: str = "channel") -> float:
        """Measured ms that one of the group's channels costs in the model (all its repeats), from the
        probe at the full width and at about half of it; ``per="macs"``: ms per MAC instead, i.e.
        how expensive the runtime finds this group's arithmetic. The engine's allocation
        (``prune(allocate="latency")``) takes channels where this is largest."""
        if per not in ("channel", "macs"):
            raise ValueError(f"per must be 'channel' or 'macs', not {per!r}")
        spec = self.spec(group)
        if spec.size < 2:
            return 0.0
        half = self.timed_as(max(1, spec.size // 2), spec.size)
        lat = self.latencies(spec, [half, spec.size])
        ms = max(0.0, lat[spec.size] - lat[half]) * spec.repeat_scale()
        if per == "macs":
            macs = spec.macs(spec.size) - spec.macs(half)
            return ms / macs if macs > 0 else 0.0
        return ms / (spec.size - half)

    def time_models(self, models: Mapping[str, nn.Module],
                    example_inputs: torch.Tensor | Sequence[torch.Tensor]) -> dict[str, float]:
        """Median latency (ms) of each whole model on this rounding's runtime, device and threads, the
        models timed interleaved in one process (``prune(allocate="measured")`` chooses between cuts
        with it)."""
        from .target import time_interleaved

        return time_interleaved(models, example_inputs, self.runtime, self.device, self.threads, self.runs, self.warmup)

    def __call__(self, group: Any, n: int) -> int:
        n = int(n)
        spec = self.spec(group)
        chosen, cost = self.choose(spec, n)
        gid = str(getattr(group, "id", len(self.decisions)))
        self.decisions[gid] = {"target": n, "chosen": chosen, "size": spec.size,
                               "latency_ms": {str(k): v for k, v in sorted(cost.items())}}
        if self.progress:
            import sys

            print(f"  {gid}: {n} -> {chosen} of {spec.size}", file=sys.stderr)
        return chosen


def _device_name(device: str) -> str:
    return "cpu" if device == "cpu" else device.replace(":", "")


# ---------------------------------------------------------------------------------------------
class LatencyModel:
    """Whole-model latency for given group widths, from measured probes:

        latency(widths) = dense latency - sum over groups of [probe(size) - probe(width)] + overlap

    The overlap term puts back what two groups' savings double-count in a layer that reads one
    pruned group and writes another (its cost scales with both widths), estimated from each layer's
    share of the dense MACs. ``dense_ms`` is the dense model measured on the same runtime.
    """

    def __init__(self, rounding: DeviceRounding, dense_ms: float):
        self.rounding, self.dense_ms = rounding, dense_ms
        self._total_macs = sum(layer.macs() for layer in rounding.layers.values()) or 1
        self._saving: dict[tuple[str, int], float] = {}

    def saving(self, group: Any, n: int) -> float:
        """ms saved by narrowing ``group`` to ``n`` channels, everything else dense (never negative)."""
        r = self.rounding
        spec = r.spec(group)
        key = (spec.signature(), n)
        if key not in self._saving:
            width = r.timed_as(n, spec.size)
            lat = r.latencies(spec, [width, spec.size])
            self._saving[key] = max(0.0, lat[spec.size] - lat[width]) * spec.repeat_scale()
        return self._saving[key]

    def estimate(self, groups: Sequence[Any], widths: Mapping[str, int]) -> float:
        saved = 0.0
        kept_ratio: dict[tuple[str, str], float] = {}
        for group in groups:
            n = int(widths.get(str(group.id), group.size))
            if n >= group.size:
                continue
            saved += self.saving(group, n)
            for path in group.producer_modules():
                kept_ratio.setdefault(("out", path), n / group.size)
            for path in group.consumer_modules():
                kept_ratio.setdefault(("in", path), n / group.size)
        # A layer narrowed on both sides was credited (1-a)T and (1-b)T but saves (1-ab)T: add back (1-a)(1-b)T.
        ms_per_mac = self.dense_ms / self._total_macs
        overlap = 0.0
        for path, layer in self.rounding.layers.items():
            a, b = kept_ratio.get(("in", path)), kept_ratio.get(("out", path))
            if a is not None and b is not None and not layer.depthwise:
                overlap += (1 - a) * (1 - b) * layer.macs() * ms_per_mac
        return self.dense_ms - saved + overlap
