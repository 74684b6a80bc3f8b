"""``edgeslim bench MODEL --runtime torch|ort|trt [--device P]``: latency and memory.

``--compare OTHER...`` times further models interleaved with MODEL in the same process (the fair
way to state a speed-up) and sets each speed-up beside its MACs reduction, counted on the PyTorch
model or the ONNX graph alike, so any pair (another tool's exports too) shows whether fewer MACs
became time; ``--remote USER@HOST`` runs the benchmark on a device over SSH.
"""
from __future__ import annotations

import os
import shutil
import tempfile

from .common import add_command, add_model_args, human


def add_parser(sub) -> None:
    p = add_command(sub, "bench", "latency (p50/p90/p99), throughput and peak memory of a model on a runtime",
                    run, render)
    add_model_args(p)
    p.add_argument("--runtime", default="ort", choices=["torch", "ort", "trt"],
                   help="torch (eager), ort (ONNX Runtime) or trt (TensorRT); default ort")
    p.add_argument("--device", help="cpu, cuda or a device profile name (edgeslim devices); default cpu")
    p.add_argument("--runs", type=int, default=100, help="timed runs (default 100)")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs first (default 10)")
    p.add_argument("--threads", type=int, help="intra-op threads (ORT session / torch); default: the runtime's")
    p.add_argument("--compile", action="store_true", help="torch runtime: time torch.compile'd model")
    p.add_argument("--compare", nargs="+", metavar="MODEL", default=[],
                   help="further models timed interleaved with MODEL; each gets speedup = MODEL p50 / its p50")
    p.add_argument("--max-spread", type=float, default=0.2,
                   help="warn when (p90-p50)/p50 exceeds this (default 0.2)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    r = p.add_argument_group("remote device (SSH)")
    r.add_argument("--remote", metavar="USER@HOST", help="run the benchmark on this machine over SSH "
                   "(it needs python3 with edgeslim installed)")
    r.add_argument("--ssh-port", type=int, default=22)
    r.add_argument("--ssh-key", help="identity file")
    r.add_argument("--ssh-known-hosts", help="known_hosts file to use")
    r.add_argument("--ssh-strict", default="accept-new", choices=["yes", "accept-new", "no"],
                   help="StrictHostKeyChecking (default accept-new)")
    r.add_argument("--ssh-option", action="append", default=[], metavar="KEY=VALUE", help="extra ssh -o option")
    r.add_argument("--remote-python", default="python3", help="python on the device (default python3)")
    r.add_argument("--remote-dir", help="folder on the device for the copied model (default: a fresh temp folder)")


def _runner_options(args, runtime: str) -> dict:
    options = {}
    if args.threads and runtime == "ort":
        options["threads"] = args.threads
    if args.compile:
        if runtime != "torch":
            raise ValueError("--compile applies to --runtime torch only")
        options["compile"] = True
    return options


def _run_remote(args) -> dict:
    from ..runtime.remote import SSHTarget, remote_bench

    if args.compare:
        raise ValueError("--compare runs locally only; bench each model remotely, or compare on the device")
    options = {}
    for item in args.ssh_option:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--ssh-option {item!r} must look like KEY=VALUE")
        options[key] = value
    target = SSHTarget.parse(args.remote, port=args.ssh_port, identity_file=args.ssh_key,
                             strict_host_key_checking=args.ssh_strict, known_hosts_file=args.ssh_known_hosts,
                             options=options, python=args.remote_python, workdir=args.remote_dir)
    extra = []
    if args.threads:
        extra += ["--threads", str(args.threads)]
    if args.compile:
        extra += ["--compile"]
    if args.no_memory:
        extra += ["--no-memory"]
    result = remote_bench(args.model, target, runtime=args.runtime, device=args.device, runs=args.runs,
                          warmup=args.warmup, input_shape=args.input, extra_args=extra)
    result["model"] = args.model
    return result


def _macs(runner) -> int | None:
    """MACs of the model a runner times (None for a TensorRT engine, or when a run of the ONNX graph
    did not give the shapes of every convolution and matrix product)."""
    from ..metrics import count
    from ..metrics.onnx_count import count_onnx
    from ..runtime import OrtRunner, TorchRunner

    if isinstance(runner, TorchRunner):
        return count(runner.model, runner.inputs).macs
    if isinstance(runner, OrtRunner):
        counted = count_onnx(runner.path, runner.input_shape)
        return None if counted.unknown else counted.macs
    return None


def run(args) -> dict:
    if args.remote:
        return _run_remote(args)
    import torch

    from ..runtime import benchmark, runner_for

    if args.threads and args.runtime == "torch":
        torch.set_num_threads(args.threads)
    models = [args.model, *args.compare]
    workdir = tempfile.mkdtemp(prefix="edgeslim-bench-")
    try:
        runners = {}
        for i, spelling in enumerate(models):
            runners[f"{i}:{spelling}"] = runner_for(
                spelling, args.runtime, device=args.device, input_shape=args.input, weights=args.weights if i == 0 else None,
                num_classes=args.num_classes, workdir=os.path.join(workdir, str(i)), **_runner_options(args, args.runtime))
        results = benchmark(runners, runs=args.runs, warmup=args.warmup, memory=not args.no_memory,
                            max_spread=args.max_spread, progress=not args.json)
        entries = []
        for key, runner in runners.items():
            entry = {"model": key.split(":", 1)[1], **results[key].to_dict(), **runner.describe(),
                     "macs": _macs(runner)}
            exported = getattr(runner, "exported", None)
            if exported is not None:
                entry["onnx"] = {"opset": exported.opset, "max_abs_diff": exported.max_abs_diff}
            entries.append(entry)
            runner.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    main, others = entries[0], entries[1:]
    for other in others:
        other["speedup"] = main["latency_ms"]["p50"] / other["latency_ms"]["p50"]
        if main["macs"] and other["macs"]:  # the issue every pruning tool is judged on: did fewer MACs become time?
            other["macs_reduction"] = main["macs"] / other["macs"]
            other["speedup_over_macs"] = other["speedup"] / other["macs_reduction"]
    if others:
        main["compared"] = others
    return main


def render(r: dict) -> None:
    def line(e: dict, extra: str = "") -> str:
        lat = e["latency_ms"]
        mem = f"{e['peak_memory_bytes'] / 2**20:.1f} MiB" if e.get("peak_memory_bytes") is not None else "—"
        macs = f"  {human(e['macs'])} MACs" if e.get("macs") else ""
        return (f"{e['model'][:38]:<38} p50 {lat['p50']:9.3f}  p90 {lat['p90']:9.3f}  p99 {lat['p99']:9.3f} ms  "
                f"{e['throughput']:9.1f}/s  mem {mem}{macs}{extra}")

    where = r.get("remote", {}).get("host")
    print(f"{r['runtime']} on {r['device']}{' at ' + where if where else ''}, batch {r['batch']}, "
          f"{r['runs']} runs after {r['warmup']} warm-up" + (", interleaved" if r.get("compared") else ""))
    print(line(r))
    for other in r.get("compared", []):
        per_macs = (f" for {other['macs_reduction']:.2f}x fewer MACs ({other['speedup_over_macs']:.2f})"
                    if "macs_reduction" in other else "")
        print(line(other, f"  speed-up {other['speedup']:.2f}x{per_macs}"))
    for e in [r, *r.get("compared", [])]:
        for w in e.get("warnings", []):
            print(f"warning ({e['model']}): {w}")
