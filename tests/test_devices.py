import json
import os
from pathlib import Path

import pytest

from edgeslim.devices import DeviceProfile, get_device, list_devices, load_profile
from edgeslim.devices.registry import BUILTIN_DIR

# The names INTERFACE.md promises, in its order.
INTERFACE_NAMES = [
    "jetson-nano", "jetson-tx2", "jetson-xavier-nx", "jetson-agx-xavier", "jetson-orin-nano-4gb",
    "jetson-orin-nano-8gb", "jetson-orin-nx-8gb", "jetson-orin-nx-16gb", "jetson-agx-orin-32gb",
    "jetson-agx-orin-64gb", "rtx-3060", "rtx-3090", "rtx-4090", "a100", "h100", "cpu",
]


@pytest.fixture(autouse=True)
def _no_real_user_profiles(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("EDGESLIM_DEVICES_DIR", raising=False)


def test_every_interface_device_is_listed_in_order():
    assert [d.name for d in list_devices()] == INTERFACE_NAMES


def test_builtin_profiles_are_consistent_with_the_data_sheets():
    for d in list_devices():
        assert d.kind in ("jetson", "gpu", "cpu")
        assert d.source.strip() and d.max_onnx_opset >= 13
        fp32, fp16, int8 = d.peak_tflops["fp32"], d.peak_tflops["fp16"], d.peak_tflops["int8"]
        assert fp32 > 0 and d.mem_bandwidth_gbs > 0 and d.memory_gb > 0
        if d.kind == "cpu":
            continue
        assert d.tensorrt and fp16 >= fp32  # every NVIDIA GPU here runs FP16 at least as fast as FP32
        if d.kind == "jetson":
            assert d.jetpack and d.power_modes
        if int8 is not None and "Tensor Cores" in d.gpu:
            # dense tensor-core INT8 = 2x FP16; GeForce quotes FP16 with FP32 accumulate, at half rate again
            assert int8 == pytest.approx((4 if d.name.startswith("rtx") else 2) * fp16, rel=0.02), d.name
    # Orin data sheets quote sparse INT8 TOPS; the stored values are dense (half).
    assert get_device("jetson-agx-orin-64gb").peak_tflops["int8"] == pytest.approx(170 / 2, rel=0.01)
    assert get_device("jetson-orin-nano-8gb").peak_tflops["int8"] == pytest.approx(40 / 2, rel=0.03)
    assert get_device("jetson-nano").peak_tflops["int8"] is None  # Maxwell has no fast INT8
    assert get_device("jetson-nano").max_onnx_opset == 13 and get_device("jetson-xavier-nx").max_onnx_opset == 17
    assert [get_device(n).dla_cores for n in ("jetson-orin-nano-8gb", "jetson-orin-nx-8gb", "jetson-orin-nx-16gb")] == [0, 1, 2]


def test_builtin_opsets_match_the_tensorrt_table():
    from edgeslim.export.tensorrt import max_onnx_opset

    for d in list_devices():
        if d.tensorrt:
            assert d.max_onnx_opset == max_onnx_opset(d.tensorrt), d.name


def test_unknown_device_lists_the_known_names():
    with pytest.raises(ValueError, match="jetson-orin-nano-8gb.*cpu"):
        get_device("jetson-orin-mega")


def test_cpu_is_detected_from_this_host():
    cpu = get_device("cpu")
    assert cpu.kind == "cpu" and cpu.tensorrt is None and cpu.origin == "detected"
    assert f"{len(os.sched_getaffinity(0))} usable cores" in cpu.source
    meminfo = Path("/proc/meminfo").read_text().splitlines()[0].split()
    assert cpu.memory_gb == pytest.approx(int(meminfo[1]) / 1024**2, rel=0.01)
    assert cpu.max_onnx_opset >= 17 and cpu.mem_bandwidth_gbs > 0
    flags = Path("/proc/cpuinfo").read_text()
    assert cpu.preferred_channel_multiple == (16 if " avx512f" in flags else 8)


def _write(folder: Path, data: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{data['name']}.json"
    path.write_text(json.dumps(data))
    return path


def _valid(name="my-board"):
    data = json.loads((BUILTIN_DIR / "jetson-orin-nano-8gb.json").read_text())
    data.update(name=name, display_name="My board", source="my own measurements")
    return data


def test_users_add_and_override_profiles_by_dropping_files(tmp_path, monkeypatch):
    folder = tmp_path / "devices"
    _write(folder, _valid("my-board"))
    override = _valid("rtx-3060")
    override.update(kind="gpu", jetpack=None, memory_gb=8)
    _write(folder, override)
    monkeypatch.setenv("EDGESLIM_DEVICES_DIR", str(folder))
    names = [d.name for d in list_devices()]
    assert "my-board" in names and names[-1] == "cpu"
    mine = get_device("my-board")
    assert isinstance(mine, DeviceProfile) and mine.origin.endswith("my-board.json")
    assert get_device("rtx-3060").memory_gb == 8  # the user's file wins over the built-in


def test_devices_json_output_is_a_valid_profile_file(tmp_path, monkeypatch):
    data = get_device("jetson-xavier-nx").to_dict()  # what `edgeslim devices jetson-xavier-nx --json` prints
    data.update(name="my-xavier", power_modes=["10W"])
    assert load_profile(_write(tmp_path, data)).power_modes == ["10W"]


def test_config_folder_is_searched(tmp_path, monkeypatch):
    _write(tmp_path / "config" / "edgeslim" / "devices", _valid("lab-orin"))
    assert get_device("lab-orin").display_name == "My board"


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("memory_gb"), "missing field 'memory_gb'"),
    (lambda d: d.update(memory_gb="8"), "'memory_gb' has the wrong type"),
    (lambda d: d.update(membw=3), r"unknown field\(s\) \['membw'\]"),
    (lambda d: d.update(kind="fpga"), "kind 'fpga' must be one of"),
    (lambda d: d.update(tensorrt=None), "needs its TensorRT version"),
    (lambda d: d.update(peak_tflops={"fp32": 1.0, "fp16": -2, "int8": None}), r"peak_tflops\['fp16'\] must be"),
    (lambda d: d.update(peak_tflops={"fp32": 1.0, "fp16": 2.0}), "peak_tflops needs 'int8'"),
    (lambda d: d.update(peak_tflops={"fp32": 1.0, "fp16": 2.0, "int8": 4.0, "fp12": 1.0}), "unknown precision"),
    (lambda d: d.update(tensorrt="ten"), "must be a version like"),
    (lambda d: d.update(source=" "), "source must name the data sheet"),
])
def test_invalid_profiles_are_refused_with_the_reason(tmp_path, change, message):
    data = _valid()
    change(data)
    with pytest.raises(ValueError, match=message):
        load_profile(_write(tmp_path, data))


def test_file_name_must_match_and_cpu_is_reserved(tmp_path):
    data = _valid("board-a")
    path = tmp_path / "board-b.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="must match the file name"):
        load_profile(path)
    with pytest.raises(ValueError, match="detected from this host"):
        load_profile(_write(tmp_path, _valid("cpu")))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_profile(tmp_path / "broken.json")


def test_the_engine_rounds_channels_to_the_profile_multiple():
    import torch

    import edgeslim
    from tiny_models import TinyNet

    result = edgeslim.prune(TinyNet(width=32), torch.randn(1, 3, 32, 32), target={"channels": 0.5},
                            round_to="device", device="jetson-orin-nano-8gb", progress=False)
    convs = [m for m in result.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.out_channels % get_device("jetson-orin-nano-8gb").preferred_channel_multiple == 0 for m in convs)
    assert sum(m.out_channels for m in convs) < 32 * 3 + 64
