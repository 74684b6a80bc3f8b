"""``edgeslim devices [NAME]``: the device profiles (built-in, the user's own, and this host)."""
from __future__ import annotations

from ..devices import get_device, list_devices, user_profile_dirs
from .common import add_command


def add_parser(sub) -> None:
    p = add_command(sub, "devices", "the device profiles: peak throughput, memory, TensorRT and opset per device",
                    run, render)
    p.add_argument("name", nargs="?", metavar="NAME", help="show one profile in full")


def run(args) -> dict:
    profiles = [get_device(args.name)] if args.name else list_devices()
    return {"devices": [p.to_dict() for p in profiles],
            "user_profile_dirs": [str(d) for d in user_profile_dirs()]}


def _tflops(peaks: dict) -> str:
    return " ".join(f"{k} {v:g}" for k, v in peaks.items() if v)


def render(r: dict) -> None:
    if len(r["devices"]) == 1:
        for key, value in r["devices"][0].items():
            print(f"{key:>26}: {value}")
        return
    print(f"{'name':<22} {'kind':<7} {'TensorRT':>8} {'opset':>5} {'memory':>8} {'GB/s':>7} {'DLA':>3}  peak dense TFLOPS/TOPS")
    for d in r["devices"]:
        print(f"{d['name']:<22} {d['kind']:<7} {d['tensorrt'] or '-':>8} {d['max_onnx_opset']:>5} "
              f"{d['memory_gb']:>6g}GB {d['mem_bandwidth_gbs']:>7g} {d['dla_cores']:>3}  {_tflops(d['peak_tflops'])}")
    print(f"\nAdd your own: NAME.json in $EDGESLIM_DEVICES_DIR or {r['user_profile_dirs'][0]} "
          "(same fields as `edgeslim devices NAME --json`).")
