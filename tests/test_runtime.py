"""Runners and the latency harness, on real models in real ONNX Runtime sessions and PyTorch."""
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import edgeslim
from edgeslim.models import CifarResNet, build_model
from edgeslim.runtime import OrtRunner, Runner, TorchRunner, benchmark, runner_for
from edgeslim.runtime.runners import TensorRTRunner, tensorrt_available

X = (1, 3, 32, 32)


@pytest.fixture(scope="module")
def onnx_pair(tmp_path_factory):
    """ResNet-20 at width 16 and width 64 (about 16x the MACs), exported to ONNX."""
    from edgeslim.export import export_onnx

    folder = tmp_path_factory.mktemp("onnx")
    example = torch.randn(X)
    paths = {}
    for name, width in (("small", 16), ("big", 64)):
        model = CifarResNet(20, width=width).eval()
        paths[name] = export_onnx(model, example, folder / f"{name}.onnx", simplify=False).path
    return paths


def test_interleaved_benchmark_ranks_models_and_reports_every_key(onnx_pair):
    runners = {k: OrtRunner(p) for k, p in onnx_pair.items()}
    res = benchmark(runners, runs=30, warmup=3)
    for r in res.values():
        d = r.to_dict()
        assert {"runtime", "latency_ms", "throughput", "peak_memory_bytes", "runs"} <= set(d)
        lat = d["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
        assert d["runs"] == 30 and d["runtime"] == "ort"
        assert d["throughput"] == pytest.approx(1e3 / lat["mean"])
    # 16x the MACs cannot be faster, however noisy the machine: the runs are interleaved.
    assert res["big"].latency_ms.p50 > 2 * res["small"].latency_ms.p50
    # The big model's weights (4.3 MB vs 0.27 MB) show up in its measured peak memory.
    assert res["big"].peak_memory_bytes > res["small"].peak_memory_bytes
    assert res["big"].peak_memory_bytes > 3e6


def test_ort_output_matches_pytorch(tmp_path):
    model = build_model("zoo:resnet20").eval()
    runner = runner_for(model, "ort", input_shape=X, workdir=tmp_path)
    feed = runner.prepare()._feed["input"]
    with torch.no_grad():
        ref = model(torch.from_numpy(feed)).numpy()
    np.testing.assert_allclose(runner.output(), ref, atol=1e-4)
    assert runner.describe()["providers"] == ["CPUExecutionProvider"]
    assert runner.exported.max_abs_diff < 1e-4


def test_ort_runner_binds_its_buffers_once(onnx_pair):
    """Timed runs reuse the bound input and output buffers (no per-call copy or allocation) and
    compute what a plain session.run computes."""
    import onnxruntime as ort

    runner = OrtRunner(onnx_pair["small"], inputs=[np.random.default_rng(1).standard_normal(X).astype(np.float32)])
    first = runner.prepare().run_once()[0]
    address = first.data_ptr()
    for _ in range(3):
        assert runner.run_once()[0].data_ptr() == address
    session = ort.InferenceSession(onnx_pair["small"], providers=["CPUExecutionProvider"])
    ref = session.run(None, {session.get_inputs()[0].name: runner._feed[session.get_inputs()[0].name]})[0]
    np.testing.assert_allclose(runner.output(), ref, atol=1e-5)
    np.testing.assert_array_equal(first.numpy(), runner.output())


def test_torch_runner_leaves_the_users_model_alone():
    model = build_model("zoo:resnet20").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    runner = TorchRunner(model, torch.randn(X))
    stats = benchmark(runner, runs=5, warmup=1)
    assert stats.runtime == "torch" and stats.latency_ms.runs == 5
    assert model.training, "the runner switched the caller's model to eval mode"
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    with torch.no_grad():
        ref = model.eval()(runner.inputs[0]).numpy()
    np.testing.assert_allclose(runner.output(), ref, atol=1e-5)


class _Sleeper(Runner):
    """A runner whose every third call takes 30 ms instead of 2 ms: the harness must call that spread
    untrustworthy."""

    runtime = "sleep"

    def _prepare(self):
        self.calls = 0

    def run_once(self):
        self.calls += 1
        time.sleep(0.002 if self.calls % 3 else 0.030)


def test_ort_workers_spin_only_during_a_run(onnx_pair):
    """Spinning (ONNX Runtime's default) keeps per-node hand-offs cheap; stopping it when run()
    returns keeps interleaved sessions from stealing each other's cores."""
    from edgeslim.runtime.runners import ort_session_options

    spin = ort_session_options(threads=2)
    assert spin.get_session_config_entry("session.force_spinning_stop") == "1"
    with pytest.raises(RuntimeError, match="allow_spinning"):  # not set: ONNX Runtime's default, spinning on
        spin.get_session_config_entry("session.intra_op.allow_spinning")
    assert spin.intra_op_num_threads == 2
    sleep = ort_session_options(allow_spinning=False)
    assert sleep.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with pytest.raises(ValueError, match="optimization"):
        ort_session_options(optimization="max")
    runner = OrtRunner(onnx_pair["small"], threads=2)
    runner.prepare()
    assert runner.time_once() > 0


def test_interleaving_runs_each_model_in_blocks_and_drops_each_blocks_first_run():
    """A model runs a few times in a row, and the first run of each block, which pays for the caches
    the other model emptied, is not a sample; blocks alternate between models (A B, B A)."""
    from edgeslim.runtime.latency import interleaved_samples

    calls = []

    def timer(name):
        def call():
            calls.append(name)
            return float(len(calls))  # the call's position: tells which calls became samples
        return call

    samples = interleaved_samples({"a": timer("a"), "b": timer("b")}, runs=6, warmup=1, block=3)
    assert calls[:2] == ["a", "b"]  # warm-up
    blocks = ["a"] * 3 + ["b"] * 3 + ["b"] * 3 + ["a"] * 3 + ["a"] * 3 + ["b"] * 3
    assert calls[2:] == blocks
    assert samples == {"a": [4.0, 5.0, 13.0, 14.0, 16.0, 17.0], "b": [7.0, 8.0, 10.0, 11.0, 19.0, 20.0]}
    single = interleaved_samples({"a": timer("a")}, runs=4, warmup=0, block=1)
    assert len(single["a"]) == 4 and calls[-4:] == ["a"] * 4
    with pytest.raises(ValueError, match="block"):
        interleaved_samples({"a": timer("a")}, runs=4, warmup=0, block=0)


def test_wide_spread_is_flagged():
    res = benchmark(_Sleeper(), runs=30, warmup=0, memory=False, max_spread=0.2)
    assert res.latency_ms.p90 > 2 * res.latency_ms.p50
    assert res.warnings and "noisy" in res.warnings[0]


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="runtime"):
        runner_for("zoo:resnet20", "tflite")
    with pytest.raises(FileNotFoundError):
        runner_for(tmp_path / "missing.onnx", "ort")
    (tmp_path / "m.onnx").write_bytes(b"")
    with pytest.raises(ValueError, match="PyTorch cannot run it"):
        runner_for(tmp_path / "m.onnx", "torch")
    with pytest.raises(ValueError, match="input_shape"):
        runner_for(build_model("zoo:resnet20"), "torch")


@pytest.mark.skipif(tensorrt_available()[0], reason="TensorRT is installed here: the error path does not apply")
def test_tensorrt_missing_is_a_clear_error(onnx_pair):
    with pytest.raises(RuntimeError, match="TensorRT"):
        runner_for(onnx_pair["small"], "trt")
    with pytest.raises(RuntimeError, match="TensorRT"):
        TensorRTRunner(onnx_pair["small"])


@pytest.mark.gpu
@pytest.mark.skipif(not tensorrt_available()[0], reason=tensorrt_available()[1])
def test_tensorrt_engine_matches_ort(onnx_pair):
    trt_runner = runner_for(onnx_pair["small"], "trt")
    ort_runner = OrtRunner(onnx_pair["small"], inputs=[trt_runner.prepare()._buffers["input"].cpu().numpy()])
    np.testing.assert_allclose(trt_runner.output(), ort_runner.output(), atol=1e-3)
    assert benchmark(trt_runner, runs=20).latency_ms.p50 > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this host")
def test_cuda_torch_runner_uses_events_and_measures_allocator_memory():
    runner = TorchRunner(build_model("zoo:resnet20"), torch.randn(X), device="cuda")
    res = benchmark(runner, runs=20, warmup=5)
    assert res.device == "cuda" and 0 < res.latency_ms.p50 < 1000
    assert res.peak_memory_bytes > 1_000_000  # 0.27 M params in fp32 plus activations


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "edgeslim", *args], capture_output=True, text=True, timeout=300)


def test_bench_cli_json(onnx_pair):
    proc = _cli("bench", onnx_pair["big"], "--runtime", "ort", "--runs", "20", "--warmup", "2",
                "--compare", onnx_pair["small"], "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["runtime"] == "ort" and r["runs"] == 20
    assert {"p50", "p90", "p99", "mean"} <= set(r["latency_ms"])
    assert r["throughput"] > 0 and r["peak_memory_bytes"] > 0
    (small,) = r["compared"]
    assert small["speedup"] > 2
    # MACs counted on the ONNX graphs: ResNet-20 at width 64 has 16x the MACs of width 16
    assert r["macs"] == edgeslim.count(CifarResNet(20, width=64), torch.randn(X)).macs
    assert small["macs_reduction"] == pytest.approx(r["macs"] / small["macs"]) and 15 < small["macs_reduction"] < 17
    assert small["speedup_over_macs"] == pytest.approx(small["speedup"] / small["macs_reduction"])


def test_bench_cli_torch_and_errors(capsys):
    from edgeslim.cli import main  # in-process: the same parser and run() without another interpreter start-up

    assert main(["bench", "zoo:resnet20", "--runtime", "torch", "--runs", "5", "--threads", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runtime"] == "torch"
    assert main(["bench", "zoo:resnet20", "--device", "no-such-board"]) == 2
    err = capsys.readouterr().err
    assert "no-such-board" in err and "Traceback" not in err
