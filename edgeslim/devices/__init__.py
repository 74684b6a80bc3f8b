"""Device profiles (Jetson boards, desktop/data-centre GPUs, this host) and cost estimates on them.

    get_device(name) -> DeviceProfile       ValueError listing the known names when unknown
    list_devices() -> list[DeviceProfile]   built-in JSON profiles + the user's folder + "cpu" (detected)
    estimate_model(model, example, device)  roofline latency per layer and a memory budget
"""
from .registry import PRECISIONS, DeviceProfile, get_device, list_devices, load_profile, user_profile_dirs

__all__ = ["DeviceProfile", "get_device", "list_devices", "load_profile", "user_profile_dirs", "PRECISIONS"]

from .estimate import Estimate, default_precision, default_workspace_mb, estimate_model  # noqa: E402

__all__ += ["Estimate", "estimate_model", "default_precision", "default_workspace_mb"]
