"""ONNX export: exporter chosen by opset, simplification with a fallback, and a parity gate.

* Exporter: torch's TorchScript-based exporter (``dynamo=False``) writes opsets 7-20, which older
  TensorRT releases need (JetPack 4.6 / TensorRT 8.2: <= 13; JetPack 5 / TensorRT 8.5: <= 17);
  the dynamo exporter starts at opset 18 and is used above 20 (``exporter="auto"``). If the first
  choice fails, the other one is tried where it can write the opset.
* Static shapes by default, optionally a dynamic batch axis; stable names ``input`` / ``output``.
* Models whose weights exceed protobuf's 2 GB limit are saved with external data (``FILE.data``).
* Simplification with onnxslim (default) or onnxsim; if the simplifier fails or its graph fails the
  parity check, the unsimplified graph is kept and ``note`` says why.
* Parity gate: ONNX Runtime vs PyTorch on several random inputs (max abs / relative error, cosine);
  a relative error above ``tolerance`` raises RuntimeError unless the user raises the tolerance.
"""
from __future__ import annotations

import contextlib
import sys
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import torch
from torch import nn

__all__ = ["ExportResult", "export_onnx", "parity", "graph_summary", "check_channels", "ort_session",
           "TORCHSCRIPT_MAX_OPSET", "DYNAMO_MIN_OPSET", "SIMPLIFIERS"]

TORCHSCRIPT_MAX_OPSET = 20   # torch.onnx._constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
DYNAMO_MIN_OPSET = 18        # torch 2.14's dynamo exporter cannot write (or down-convert to) anything older
PROTOBUF_LIMIT = 2 * 1024**3
SIMPLIFIERS = ("onnxslim", "onnxsim")


@dataclass
class ExportResult:
    path: str
    opset: int
    nodes_before: int
    nodes_after: int
    max_abs_diff: float
    max_rel_diff: float
    cosine: float
    simplified: bool
    constant_output: bool = False
    note: str = ""
    exporter: str = ""
    simplifier: str | None = None
    tolerance: float = 1e-4
    trials: int = 0
    dynamic_batch: bool = False
    external_data: bool = False
    input_names: list[str] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)
    initializer_bytes: int = 0
    file_bytes: int = 0
    op_counts_before: dict[str, int] = field(default_factory=dict)
    op_counts_after: dict[str, int] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    """Eval mode for the duration, then the user's own mode back (the model is never left changed)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def ort_session(path: str | Path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _outputs(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [v for v in value.values() if isinstance(v, torch.Tensor)]
    return [v for v in value if isinstance(v, torch.Tensor)]


@torch.no_grad()
def parity(model: nn.Module, path: str | Path, example: torch.Tensor, trials: int = 5, seed: int = 0,
           batch_sizes: Sequence[int] | None = None) -> dict[str, float]:
    """Worst-case agreement of PyTorch and ONNX Runtime over ``trials`` random inputs shaped like ``example``.

    ``max_rel_diff`` is the largest absolute difference divided by the largest reference magnitude
    (per output, worst over trials and outputs); ``cosine`` the smallest cosine similarity.
    ``batch_sizes`` cycles the batch size across trials (for a dynamic batch axis). ``constant_output``
    is True when the model's outputs did not change with the input: then the check proves nothing.
    """
    sess = ort_session(path)
    name = sess.get_inputs()[0].name
    gen = torch.Generator().manual_seed(seed)
    worst = {"max_abs_diff": 0.0, "max_rel_diff": 0.0, "cosine": 1.0}
    first: list[np.ndarray] | None = None
    varies = False
    with _eval_mode(model):
        for i in range(trials):
            shape = list(example.shape)
            if batch_sizes:
                shape[0] = batch_sizes[i % len(batch_sizes)]
            x = torch.randn(shape, generator=gen, dtype=example.dtype)
            refs = [r.float().numpy() for r in _outputs(model(x))]
            gots = sess.run(None, {name: x.numpy()})
            if first is None:
                first = refs
            elif not varies:
                varies = any(a.shape != b.shape or not np.array_equal(a, b) for a, b in zip(first, refs))
            if len(refs) != len(gots):
                raise RuntimeError(f"PyTorch returned {len(refs)} outputs but the ONNX graph {len(gots)}")
            for ref, got in zip(refs, gots):
                if ref.shape != got.shape:
                    raise RuntimeError(f"output shape differs: PyTorch {ref.shape}, ONNX Runtime {got.shape}")
                diff = np.abs(ref.astype(np.float64) - got)
                worst["max_abs_diff"] = max(worst["max_abs_diff"], float(diff.max()))
                worst["max_rel_diff"] = max(worst["max_rel_diff"], float(diff.max() / (np.abs(ref).max() + 1e-12)))
                cos = float((ref * got).sum() / (np.linalg.norm(ref) * np.linalg.norm(got) + 1e-12))
                worst["cosine"] = min(worst["cosine"], cos)
    # Outputs that ignore the input (e.g. a zero-initialised classifier) make the comparison vacuous.
    worst["constant_output"] = trials > 1 and not varies
    return worst


def graph_summary(model: onnx.ModelProto) -> dict[str, Any]:
    """Node count, operator histogram and weight bytes of a graph (external data counted by size)."""
    init_bytes = 0
    for init in model.graph.initializer:
        count = int(np.prod(init.dims)) if init.dims else 1
        init_bytes += count * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
    return {"nodes": len(model.graph.node),
            "op_counts": dict(sorted(Counter(n.op_type for n in model.graph.node).items())),
            "initializer_bytes": init_bytes}


def _conv_weight_shapes(graph: onnx.ModelProto) -> list[tuple[int, ...]]:
    inits = {i.name: tuple(i.dims) for i in graph.graph.initializer}
    return sorted(inits[n.input[1]] for n in graph.graph.node if n.op_type == "Conv" and n.input[1] in inits)


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _module_conv_shapes(model: nn.Module, example: torch.Tensor | None = None) -> list[tuple[int, ...]]:
    """Weight shapes of the model's convolutions; with ``example``, only those the forward pass runs
    (an Inception's auxiliary classifier is skipped in eval mode and is not in the graph)."""
    convs = [m for m in model.modules() if isinstance(m, _CONVS)]
    if example is not None:
        ran: list[nn.Module] = []
        handles = [m.register_forward_hook(lambda mod, _i, _o: ran.append(mod)) for m in convs]
        try:
            with _eval_mode(model), torch.no_grad():
                model(example)
        finally:
            for h in handles:
                h.remove()
        convs = list({id(m): m for m in ran}.values())
    return sorted(tuple(m.weight.shape) for m in convs)


def check_channels(onnx_model: onnx.ModelProto | str | Path, model: nn.Module, dense_model: nn.Module | None = None,
                   example: torch.Tensor | None = None) -> dict[str, Any]:
    """Do the graph's convolution weights have the slim model's channel counts (and not the dense one's)?

    Compares the multiset of Conv weight shapes (out, in/groups, k...) in the graph with the model's
    ``nn.Conv1d/2d/3d`` weights (with ``example``: those the forward pass runs); names are ignored because
    exporters rename folded weights. An unpruned model exported by mistake shows up as
    ``differs_from_dense: False``.
    """
    if not isinstance(onnx_model, onnx.ModelProto):
        onnx_model = onnx.load(str(onnx_model), load_external_data=False)
    in_graph, expected = _conv_weight_shapes(onnx_model), _module_conv_shapes(model, example)
    result: dict[str, Any] = {"conv_layers": len(in_graph), "matches_model": in_graph == expected,
                              "graph_out_channels": sum(s[0] for s in in_graph),
                              "model_out_channels": sum(s[0] for s in expected)}
    if in_graph != expected:
        missing = list((Counter(expected) - Counter(in_graph)).elements())[:5]
        extra = list((Counter(in_graph) - Counter(expected)).elements())[:5]
        result["mismatches"] = {"in_model_not_graph": [list(s) for s in missing],
                                "in_graph_not_model": [list(s) for s in extra]}
    if dense_model is not None:
        dense = _module_conv_shapes(dense_model, example)
        result["dense_out_channels"] = sum(s[0] for s in dense)
        result["differs_from_dense"] = in_graph != dense
        result["model_differs_from_dense"] = expected != dense
    return result


def _choose_exporters(opset: int, exporter: str) -> list[str]:
    if exporter not in ("auto", "torchscript", "dynamo"):
        raise ValueError(f"exporter must be auto, torchscript or dynamo, not {exporter!r}")
    can = [e for e, ok in (("torchscript", opset <= TORCHSCRIPT_MAX_OPSET), ("dynamo", opset >= DYNAMO_MIN_OPSET)) if ok]
    if exporter != "auto":
        if exporter not in can:
            limits = f"torchscript: 7..{TORCHSCRIPT_MAX_OPSET}, dynamo: {DYNAMO_MIN_OPSET}+"
            raise ValueError(f"the {exporter} exporter cannot write opset {opset} ({limits})")
        return [exporter]
    if not can:
        raise ValueError(f"no exporter writes opset {opset}")
    return can  # torchscript first where it can (fast, every opset a device needs), dynamo as the fallback


def _run_exporter(kind: str, model: nn.Module, example: torch.Tensor, path: Path, opset: int,
                  input_names: list[str], output_names: list[str], dynamic_batch: bool) -> None:
    axes = {n: {0: "batch"} for n in [*input_names, *output_names]} if dynamic_batch else None
    # The exporters print progress on stdout, which belongs to --json: send it to stderr.
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        if kind == "torchscript":
            torch.onnx.export(model, (example,), str(path), opset_version=opset, dynamo=False,
                              input_names=input_names, output_names=output_names, dynamic_axes=axes,
                              do_constant_folding=True)
        else:
            torch.onnx.export(model, (example,), str(path), opset_version=opset, dynamo=True,
                              input_names=input_names, output_names=output_names, dynamic_axes=axes,
                              external_data=True, verbose=False)


def _simplify(model: onnx.ModelProto, simplifier) -> onnx.ModelProto:
    if callable(simplifier):  # the user's own pass (e.g. a graph-surgeon script); gated like the others
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return simplifier(copy)
    if simplifier == "onnxslim":
        import onnxslim

        return onnxslim.slim(model)
    try:
        import onnxsim
    except ImportError:
        raise RuntimeError("onnxsim is not installed (pip install 'edgeslim[onnxsim]'); "
                           "or use the default simplifier onnxslim") from None
    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise RuntimeError("onnxsim's own check of the simplified graph failed")
    return simplified


def _save(model: onnx.ModelProto, path: Path, external: bool) -> None:
    """Write ``model`` once (onnx moves the weights out of the proto when it writes external data)."""
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    if external:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=data.name, size_threshold=1024)
    else:
        onnx.save(model, str(path))


def _export_raw(model: nn.Module, example: torch.Tensor, path: Path, opset: int, exporter: str,
                input_names: list[str], output_names: list[str], dynamic_batch: bool) -> tuple[str, list[str]]:
    """Run the exporter(s) for ``opset``; returns the one that worked and a note when the first failed."""
    errors = []
    for kind in _choose_exporters(opset, exporter):
        try:
            _run_exporter(kind, model, example, path, opset, input_names, output_names, dynamic_batch)
            return kind, [f"first exporter failed ({errors[0]}); used {kind}"] if errors else []
        except Exception as exc:  # noqa: BLE001 - any exporter failure: try the other exporter
            errors.append(f"{kind}: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}")
    raise RuntimeError(f"could not export to ONNX opset {opset}: " + " | ".join(errors))


def _gate(checked: dict[str, float], tolerance: float) -> None:
    if not checked["max_rel_diff"] <= tolerance:  # also refuses NaN
        raise RuntimeError(f"the exported ONNX graph differs from PyTorch: relative error "
                           f"{checked['max_rel_diff']:.2e} > tolerance {tolerance:.0e} (max abs "
                           f"{checked['max_abs_diff']:.2e}, cosine {checked['cosine']:.6f}); raise the "
                           "tolerance only if you accept that difference")


def _simplified(raw_path: Path, simplifier, label: str, path: Path, external: bool, check,
                tolerance: float) -> tuple:
    """Simplify the graph at ``raw_path`` into ``path`` and check it; (parity, summary) when it passes, else
    (None, the reason). The raw graph is only held while the simplifier runs: big models stay affordable."""
    try:
        slim = _simplify(onnx.load(str(raw_path)), simplifier)
        summary = graph_summary(slim)
        _save(slim, path, external)
        checked = check(path)
    except Exception as exc:  # noqa: BLE001 - a simplifier crash must not lose a good export
        return None, f"{label} failed ({type(exc).__name__}: {str(exc).strip()[:200]}); kept the unsimplified export"
    try:
        _gate(checked, tolerance)
    except RuntimeError:
        return None, (f"the {label}-simplified graph failed the parity check (relative error "
                      f"{checked['max_rel_diff']:.2e}); kept the unsimplified export")
    return checked, summary


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, opset: int = 17,
                simplify: bool | str | None = "onnxslim", tolerance: float = 1e-4, trials: int = 5,
                dynamic_batch: bool = False, exporter: str = "auto", external_data: bool | None = None,
                input_names: Sequence[str] = ("input",), output_names: Sequence[str] | None = None) -> ExportResult:
    """Export ``model`` for inference and prove the graph computes what the model computes.

    ``simplify``: "onnxslim" (default), "onnxsim", True (= onnxslim), False/None, or a function taking and
    returning a ModelProto (the user's own pass: gated by the same parity check).
    ``external_data``: None decides by size (weights over 2 GB go to ``PATH.data``).
    Raises RuntimeError when ONNX Runtime's outputs differ from PyTorch's by more than ``tolerance``
    (relative to the largest output magnitude). The model's train/eval mode is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    simplifier = "onnxslim" if simplify is True else (simplify or None)
    if simplifier is not None and not callable(simplifier) and simplifier not in SIMPLIFIERS:
        raise ValueError(f"simplify must be one of {SIMPLIFIERS}, a function ModelProto -> ModelProto, or False; "
                         f"not {simplify!r}")
    label = simplifier if isinstance(simplifier, str) or simplifier is None else getattr(simplifier, "__name__", "custom")
    if dynamic_batch:
        # Trace with batch 2: a batch of 1 lets exporters fold the batch size into reshapes as a constant.
        example = example[:1].expand(2, *example.shape[1:]).contiguous()
    with _eval_mode(model), torch.no_grad():
        n_out = len(_outputs(model(example)))
    input_names = list(input_names)
    output_names = list(output_names) if output_names else (
        ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)])
    weight_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    external = weight_bytes > 0.9 * PROTOBUF_LIMIT if external_data is None else bool(external_data)

    def check(graph_path: Path) -> dict[str, float]:
        return parity(model, graph_path, example, trials, batch_sizes=(1, 3) if dynamic_batch else None)

    timing: dict[str, float] = {}
    with _eval_mode(model), tempfile.TemporaryDirectory(dir=path.parent, prefix=".edgeslim-export-") as tmp:
        raw_path = Path(tmp) / "raw" / path.name
        raw_path.parent.mkdir()
        t0 = time.perf_counter()
        kind, notes = _export_raw(model, example, raw_path, opset, exporter, input_names, output_names, dynamic_batch)
        timing["export_s"] = time.perf_counter() - t0
        checked = check(raw_path)
        _gate(checked, tolerance)
        before = after = graph_summary(onnx.load(str(raw_path), load_external_data=False))
        chosen = None  # the folder of a simplified graph that passed
        if simplifier is not None:
            t0 = time.perf_counter()
            slim_path = Path(tmp) / "slim" / path.name
            slim_path.parent.mkdir()
            slim_check, detail = _simplified(raw_path, simplifier, label, slim_path, external, check, tolerance)
            if slim_check is None:
                notes.append(detail)
            else:
                checked, after, chosen = slim_check, detail, slim_path.parent
            timing["simplify_s"] = time.perf_counter() - t0
        data = path.with_name(path.name + ".data")
        if chosen is not None:
            data.unlink(missing_ok=True)
            for f in chosen.iterdir():  # the graph and, for big models, its .data file
                f.replace(path.parent / f.name)
        else:
            _save(onnx.load(str(raw_path)), path, external)  # one layout whatever the exporter wrote
    return ExportResult(
        path=str(path), opset=opset, nodes_before=before["nodes"], nodes_after=after["nodes"],
        simplified=chosen is not None, note="; ".join(notes), exporter=kind,
        simplifier=label if chosen is not None else None, tolerance=tolerance, trials=trials,
        dynamic_batch=dynamic_batch, external_data=external, input_names=input_names, output_names=output_names,
        initializer_bytes=after["initializer_bytes"],
        file_bytes=path.stat().st_size + (data.stat().st_size if external else 0),
        op_counts_before=before["op_counts"], op_counts_after=after["op_counts"], timing=timing, **checked)
