"""MACs of an exported ONNX graph, for models that exist only as ONNX files (another tool's export,
``edgeslim bench dense.onnx --compare slim.onnx``).

The convention of :func:`edgeslim.metrics.count`: the multiply-accumulates of convolutions and
matrix products (``Conv``, ``ConvTranspose``, ``Gemm``, ``MatMul`` and their quantized forms),
bias additions not counted, ``flops = 2 * macs``. Shapes are those of one real run in ONNX Runtime
(random inputs; any dynamic input dimension fixed from ``input_shape``, or 1): static shape
inference cannot follow sizes the graph computes itself (e.g. the padding of a zero-padded
shortcut). Nodes inside control-flow subgraphs (``If``, ``Loop``) are not visited; a counted node
whose shapes are still unknown is named in ``unknown``, never counted as zero silently.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Sequence

__all__ = ["OnnxCount", "count_onnx"]

_CONVS = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3, "ConvTranspose": 1}  # op type -> its weight's input
_MATMULS = {"MatMul", "MatMulInteger", "QLinearMatMul", "Gemm"}  # the left operand is input 0 in each


@dataclass
class OnnxCount:
    macs: int
    counted_nodes: int
    unknown: list[str] = field(default_factory=list)  # nodes to count whose shapes the run did not give

    @property
    def flops(self) -> int:
        return 2 * self.macs


def _shapes(model, names: set[str], input_shape: Sequence[int] | None) -> dict[str, list[int]]:
    """The shapes of ``names`` (and of every initializer) in one run of ``model`` by an
    :class:`~edgeslim.runtime.OrtRunner` (its random inputs, dynamic dimensions from ``input_shape``
    or 1), with graph optimizations off so every value stays as written."""
    import tempfile

    import onnx

    from ..runtime.runners import OrtRunner

    shapes = {init.name: list(init.dims) for init in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in shapes and n not in outputs)
    with tempfile.TemporaryDirectory(prefix="edgeslim-count-") as folder:
        path = os.path.join(folder, "model.onnx")
        onnx.save(model, path)
        runner = OrtRunner(path, input_shape=input_shape, optimization="none")
        try:
            values = runner.prepare().run_once()
            shapes.update((o.name, list(v.shape())) for o, v in zip(model.graph.output, values))
        finally:
            runner.close()
    return shapes


def _node_macs(node, shapes) -> int | None:
    """MACs of one convolution or matrix product; None when a shape it needs is unknown."""
    def shape(i):
        return shapes.get(node.input[i]) if i < len(node.input) else None

    out = shapes.get(node.output[0])
    if node.op_type in _CONVS:
        w = shape(_CONVS[node.op_type])
        if node.op_type == "ConvTranspose":  # every input element meets Cout/groups x kernel weights
            x = shape(0)
            return math.prod(x) * math.prod(w[1:]) if x and w else None
        return math.prod(out) * math.prod(w[1:]) if out and w else None  # Cin/groups x kernel per output
    a = shape(0)
    if not (a and out):
        return None
    trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)  # Gemm only
    return math.prod(out) * (a[0] if trans_a else a[-1])  # the contracted dimension per output


def count_onnx(path: str | os.PathLike, input_shape: Sequence[int] | None = None) -> OnnxCount:
    """MACs of the ONNX model at ``path`` (see the module docstring for what is counted)."""
    import onnx

    model = onnx.load(str(path))
    nodes = [n for n in model.graph.node if n.op_type in _CONVS or n.op_type in _MATMULS]
    shapes = _shapes(model, {name for n in nodes for name in (*n.input, n.output[0]) if name}, input_shape)
    macs, counted, unknown = 0, 0, []
    for node in nodes:
        n = _node_macs(node, shapes)
        if n is None:
            unknown.append(node.name or node.op_type)
        else:
            macs, counted = macs + n, counted + 1
    return OnnxCount(macs, counted, unknown)
