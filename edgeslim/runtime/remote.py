"""Benchmark on another machine over SSH: copy the model there, run ``edgeslim bench`` there, bring
the JSON back.

The remote machine needs Python with edgeslim installed (``pip install edgeslim`` next to the
runtime it should time: onnxruntime, or TensorRT on a Jetson); it runs
``PYTHON -m edgeslim bench FILE --runtime R --json``, so a remote result is exactly what a local
``edgeslim bench`` would print there.

Safety: ``ssh`` is started with an argument list (never a shell here), every remote path and
argument is quoted with :func:`shlex.quote` before it reaches the remote shell, the destination
follows ``--`` so it cannot be taken for an option, and the file is streamed over the SSH
connection's stdin (``cat > FILE``) instead of through ``scp``, whose remote path quoting differs
between its legacy and SFTP modes.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

__all__ = ["SSHTarget", "remote_bench", "RemoteError"]

_HOST_KEY_POLICIES = ("yes", "accept-new", "no")


class RemoteError(RuntimeError):
    """The remote side failed; the message carries its exit status and stderr."""


@dataclass
class SSHTarget:
    """How to reach the device.

    ``strict_host_key_checking``: ``yes`` (the host must already be in known_hosts: the safe choice
    for devices you own), ``accept-new`` (trust on first use; the default) or ``no``.
    ``options``: further ``ssh -o KEY=VALUE`` settings, e.g. ``{"ProxyJump": "gateway"}``.
    ``workdir``: remote folder for the copied model (a fresh ``mktemp -d`` folder, removed after, by default).
    """

    host: str
    user: str | None = None
    port: int = 22
    identity_file: str | None = None
    strict_host_key_checking: str = "accept-new"
    known_hosts_file: str | None = None
    ssh_config: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    python: str = "python3"
    workdir: str | None = None
    connect_timeout: int = 15

    def __post_init__(self) -> None:
        if not self.host or self.host.startswith("-") or any(c.isspace() for c in self.host):
            raise ValueError(f"invalid SSH host {self.host!r}")
        if self.user is not None and (not self.user or self.user.startswith("-") or "@" in self.user
                                      or any(c.isspace() for c in self.user)):
            raise ValueError(f"invalid SSH user {self.user!r}")
        if not 0 < int(self.port) < 65536:
            raise ValueError(f"invalid SSH port {self.port!r}")
        if self.strict_host_key_checking not in _HOST_KEY_POLICIES:
            raise ValueError(f"strict_host_key_checking must be one of {', '.join(_HOST_KEY_POLICIES)}")
        if self.identity_file and not os.path.isfile(self.identity_file):
            raise FileNotFoundError(f"SSH identity file {self.identity_file!r} does not exist")
        for key in self.options:
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", key):
                raise ValueError(f"invalid ssh option name {key!r}")

    @classmethod
    def parse(cls, destination: str, **kwargs: Any) -> "SSHTarget":
        """``user@host`` or ``host`` -> SSHTarget."""
        user, _, host = destination.rpartition("@")
        return cls(host=host, user=user or None, **kwargs)

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def ssh_command(self, remote_command: str) -> list[str]:
        """The argv of ``ssh`` running ``remote_command`` (already quoted for the remote shell)."""
        argv = ["ssh", "-o", "BatchMode=yes", "-o", f"StrictHostKeyChecking={self.strict_host_key_checking}",
                "-o", f"ConnectTimeout={int(self.connect_timeout)}", "-p", str(int(self.port))]
        if self.ssh_config:
            argv += ["-F", self.ssh_config]
        if self.identity_file:
            argv += ["-i", self.identity_file, "-o", "IdentitiesOnly=yes"]
        if self.known_hosts_file:
            argv += ["-o", f"UserKnownHostsFile={self.known_hosts_file}"]
        for key, value in self.options.items():
            argv += ["-o", f"{key}={value}"]
        return argv + ["--", self.destination, remote_command]

    def run(self, remote_command: str, stdin: Any = None, timeout: float | None = 600) -> str:
        """Run a (quoted) command on the device; returns its stdout, raises RemoteError on failure."""
        try:
            proc = subprocess.run(self.ssh_command(remote_command), stdin=stdin if stdin is not None else subprocess.DEVNULL,
                                  capture_output=True, timeout=timeout)
        except FileNotFoundError:
            raise RuntimeError("the ssh client is not installed (Debian: apt-get install openssh-client)") from None
        except subprocess.TimeoutExpired:
            raise RemoteError(f"{self.destination}: no answer within {timeout} s") from None
        if proc.returncode != 0:
            err = (proc.stderr or proc.stdout).decode(errors="replace").strip()
            if proc.returncode == 255:
                raise RemoteError(f"ssh to {self.destination}:{self.port} failed: {err or 'connection error'}")
            raise RemoteError(f"remote command failed on {self.destination} (exit {proc.returncode}): {err[-2000:]}")
        return proc.stdout.decode(errors="replace")

    def upload(self, local: str | os.PathLike, remote_path: str, timeout: float | None = 600) -> None:
        """Copy a local file to ``remote_path`` (streamed over stdin; parent folders are created)."""
        parent = str(PurePosixPath(remote_path).parent)
        command = f"mkdir -p -- {shlex.quote(parent)} && cat > {shlex.quote(remote_path)}"
        with open(local, "rb") as f:
            self.run(command, stdin=f, timeout=timeout)


def _bench_args(runtime: str, device: str | None, runs: int, warmup: int, input_shape: Sequence[int] | None,
                extra: Sequence[str]) -> list[str]:
    args = ["--runtime", runtime, "--runs", str(int(runs)), "--warmup", str(int(warmup)), "--json"]
    if device:
        args += ["--device", device]
    if input_shape:
        args += ["--input", "x".join(str(int(v)) for v in input_shape)]
    return args + [str(a) for a in extra]


def remote_bench(model: str | os.PathLike, target: SSHTarget, runtime: str = "ort", device: str | None = None,
                 runs: int = 100, warmup: int = 10, input_shape: Sequence[int] | None = None,
                 extra_args: Sequence[str] = (), timeout: float | None = 900) -> dict[str, Any]:
    """Benchmark ``model`` on ``target``; returns the remote ``edgeslim bench --json`` object plus
    ``remote`` {host, port, path}.

    ``model`` is a local file (``.onnx``, a TensorRT engine or an edgeslim checkpoint), copied to the
    device, or a spelling the device can build itself (``zoo:resnet20``, ``torchvision:resnet50``).
    """
    local = Path(model)
    is_file = local.is_file()
    if not is_file and str(model).endswith((".onnx", ".pt", ".pth", ".engine", ".plan", ".trt")):
        raise FileNotFoundError(f"model file {str(model)!r} does not exist")
    made_workdir = target.workdir is None
    workdir = target.workdir or target.run("mktemp -d", timeout=target.connect_timeout + 30).strip()
    if not workdir.startswith("/") or "\n" in workdir:
        raise RemoteError(f"could not create a remote work folder (mktemp printed {workdir!r})")
    try:
        if is_file:
            # A fixed, harmless remote name: the user's file name never reaches the remote shell.
            remote_model = str(PurePosixPath(workdir) / ("model" + "".join(local.suffixes[-1:]).lower()))
            target.upload(local, remote_model, timeout=timeout)
        else:
            remote_model = str(model)
        argv = [target.python, "-m", "edgeslim", "bench", remote_model,
                *_bench_args(runtime, device, runs, warmup, input_shape, extra_args)]
        out = target.run(" ".join(shlex.quote(a) for a in argv), timeout=timeout)
    finally:
        if made_workdir:
            try:
                target.run(f"rm -rf -- {shlex.quote(workdir)}", timeout=target.connect_timeout + 30)
            except (RemoteError, RuntimeError):
                pass  # best effort: the result matters more than the leftover temp folder
    lines = [line for line in out.splitlines() if line.strip().startswith("{")]
    if not lines:
        raise RemoteError(f"the remote bench printed no JSON: {out[-1000:]!r}")
    result = json.loads(lines[-1])
    if "error" in result:
        raise RemoteError(f"remote bench on {target.destination} failed: {result['error']}")
    result["remote"] = {"host": target.host, "port": target.port, "path": remote_model}
    return result
