"""Device profiles: one JSON file per device, validated on load.

Built-in profiles live in ``edgeslim/devices/profiles/*.json``. Users add or override profiles by
dropping ``NAME.json`` files into a folder named by ``$EDGESLIM_DEVICES_DIR`` (several folders
separated by ``os.pathsep``) or into ``~/.config/edgeslim/devices/`` (``$XDG_CONFIG_HOME`` is
respected). The ``cpu`` profile is not a file: it describes this host and is detected at load.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["DeviceProfile", "get_device", "list_devices", "load_profile", "user_profile_dirs", "PRECISIONS"]

BUILTIN_DIR = Path(__file__).with_name("profiles")
KINDS = ("jetson", "gpu", "cpu")
# Precisions a profile may quote peak throughput for (TFLOPS, or TOPS for integer types).
PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "fp8", "int8", "int4")
_REQUIRED = {
    "name": str, "kind": str, "display_name": str, "jetpack": (str, type(None)), "tensorrt": (str, type(None)),
    "max_onnx_opset": int, "peak_tflops": dict, "mem_bandwidth_gbs": (int, float), "memory_gb": (int, float),
    "dla_cores": int, "power_modes": list, "preferred_channel_multiple": int, "source": str,
}
_OPTIONAL = {"gpu": str, "notes": str}


@dataclass(frozen=True)
class DeviceProfile:
    """What edgeslim knows about a target device (figures from the vendor's data sheets)."""

    name: str
    kind: str                       # "jetson" | "gpu" | "cpu"
    display_name: str
    jetpack: str | None
    tensorrt: str | None            # TensorRT version the device runs, e.g. "10.3"
    max_onnx_opset: int
    peak_tflops: dict[str, float | None]   # dense; None = no fast path for that precision
    mem_bandwidth_gbs: float
    memory_gb: float
    dla_cores: int
    power_modes: list[str]
    preferred_channel_multiple: int
    source: str                     # the data sheets the figures come from
    gpu: str = ""
    notes: str = ""
    origin: str = field(default="built-in", compare=False)  # file the profile was read from

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def peak_flops(self, precision: str = "fp32") -> float:
        """Dense peak in operations per second; falls back to FP32 where ``precision`` has no fast path."""
        value = self.peak_tflops.get(precision) or self.peak_tflops["fp32"]
        return float(value) * 1e12

    def supports(self, precision: str) -> bool:
        return bool(self.peak_tflops.get(precision))


def _fail(where: str, message: str) -> None:
    raise ValueError(f"device profile {where}: {message}")


def validate(data: dict[str, Any], where: str) -> dict[str, Any]:
    """Check one profile's fields and return them normalised; raise ValueError naming the problem."""
    if not isinstance(data, dict):
        _fail(where, "must be a JSON object")
    data = {k: v for k, v in data.items() if k != "origin"}  # `edgeslim devices NAME --json` output is a valid file
    unknown = set(data) - set(_REQUIRED) - set(_OPTIONAL)
    if unknown:
        _fail(where, f"unknown field(s) {sorted(unknown)}; allowed: {sorted(_REQUIRED) + sorted(_OPTIONAL)}")
    for key, types in {**_REQUIRED, **_OPTIONAL}.items():
        if key not in data:
            if key in _REQUIRED:
                _fail(where, f"missing field {key!r}")
            continue
        value = data[key]
        if not isinstance(value, types) or (isinstance(value, bool) and types is not bool):
            _fail(where, f"field {key!r} has the wrong type ({type(value).__name__})")
    name = data["name"]
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name != name.lower():
        _fail(where, f"name {name!r} must be lower-case letters, digits, '-', '_' or '.'")
    if data["kind"] not in KINDS:
        _fail(where, f"kind {data['kind']!r} must be one of {', '.join(KINDS)}")
    if data["kind"] in ("jetson", "gpu") and not data["tensorrt"]:
        _fail(where, f"a {data['kind']} profile needs its TensorRT version in 'tensorrt' (e.g. \"10.3\")")
    if data["kind"] == "jetson" and not data["jetpack"]:
        _fail(where, "a jetson profile needs its JetPack version in 'jetpack' (e.g. \"6.2\")")
    for key in ("tensorrt", "jetpack"):
        if data[key] is not None and not all(part.isdigit() for part in data[key].split(".")):
            _fail(where, f"{key} {data[key]!r} must be a version like \"10.3\"")
    if not 7 <= data["max_onnx_opset"] <= 40:
        _fail(where, f"max_onnx_opset {data['max_onnx_opset']} is not a plausible ONNX opset (7..40)")
    peaks = data["peak_tflops"]
    bad = set(peaks) - set(PRECISIONS)
    if bad:
        _fail(where, f"peak_tflops has unknown precision(s) {sorted(bad)}; known: {', '.join(PRECISIONS)}")
    for key in ("fp32", "fp16", "int8"):
        if key not in peaks:
            _fail(where, f"peak_tflops needs {key!r} (null when the device has no fast path for it)")
    for key, value in peaks.items():
        ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                               and math.isfinite(value) and value > 0)
        if not ok:
            _fail(where, f"peak_tflops[{key!r}] must be a positive number or null, not {value!r}")
    if not peaks["fp32"]:
        _fail(where, "peak_tflops['fp32'] must be a positive number")
    for key in ("mem_bandwidth_gbs", "memory_gb"):
        if not data[key] > 0:
            _fail(where, f"{key} must be positive")
    if data["dla_cores"] < 0:
        _fail(where, "dla_cores must be 0 or more")
    if not all(isinstance(m, str) for m in data["power_modes"]):
        _fail(where, "power_modes must be a list of strings")
    if data["preferred_channel_multiple"] < 1:
        _fail(where, "preferred_channel_multiple must be 1 or more")
    if not data["source"].strip():
        _fail(where, "source must name the data sheet(s) the figures come from")
    out = dict(data)
    out["peak_tflops"] = {k: (float(v) if v is not None else None) for k, v in peaks.items()}
    out["mem_bandwidth_gbs"] = float(data["mem_bandwidth_gbs"])
    out["memory_gb"] = float(data["memory_gb"])
    return out


def load_profile(path: str | os.PathLike) -> DeviceProfile:
    """Read and validate one profile file; its ``name`` must match the file name (``NAME.json``)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"device profile {path}: not valid JSON ({exc})") from None
    data = validate(data, str(path))
    if data["name"] != path.stem:
        _fail(str(path), f"name {data['name']!r} must match the file name ({path.stem}.json)")
    if data["name"] == "cpu":
        _fail(str(path), "'cpu' is detected from this host and cannot be defined by a file; choose another name")
    return DeviceProfile(**data, origin=str(path))


def user_profile_dirs() -> list[Path]:
    """Folders searched for users' own profiles, lowest priority first."""
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    dirs = [config / "edgeslim" / "devices"]
    dirs += [Path(p) for p in os.environ.get("EDGESLIM_DEVICES_DIR", "").split(os.pathsep) if p]
    return dirs


def _file_profiles() -> dict[str, DeviceProfile]:
    profiles: dict[str, DeviceProfile] = {}
    for folder in [BUILTIN_DIR, *user_profile_dirs()]:
        if folder.is_dir():
            for path in sorted(folder.glob("*.json")):
                profile = load_profile(path)
                profiles[profile.name] = profile  # a user's file overrides a built-in of the same name
    return profiles


@lru_cache(maxsize=1)
def _host_profile() -> DeviceProfile:
    from .host import detect_host

    return DeviceProfile(**validate(detect_host(), "cpu (detected)"), origin="detected")


def _listing_order(p: DeviceProfile) -> tuple:
    """Jetson boards by generation and size, then GPUs by size, then this host."""
    jetpack = tuple(int(v) for v in p.jetpack.split(".")) if p.jetpack else ()
    return KINDS.index(p.kind), jetpack, p.memory_gb, p.peak_tflops.get("fp16") or p.peak_tflops["fp32"], p.name


def list_devices() -> list[DeviceProfile]:
    """Built-in and users' profiles (Jetson, then GPUs, smallest first), then ``cpu`` (this host, detected)."""
    profiles = sorted(_file_profiles().values(), key=_listing_order)
    return [*profiles, _host_profile()]


def get_device(name: str | DeviceProfile) -> DeviceProfile:
    """The profile called ``name``; ValueError listing the known names when there is none."""
    if isinstance(name, DeviceProfile):
        return name
    if name == "cpu":
        return _host_profile()
    profiles = _file_profiles()
    if name not in profiles:
        known = ", ".join([p.name for p in sorted(profiles.values(), key=_listing_order)] + ["cpu"])
        raise ValueError(f"unknown device {name!r}; known devices: {known}. Add your own as NAME.json in "
                         f"$EDGESLIM_DEVICES_DIR or {user_profile_dirs()[0]}")
    return profiles[name]
