"""The remote runner against a real OpenSSH server on loopback, started by the fixture."""
import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from edgeslim.runtime.remote import RemoteError, SSHTarget, remote_bench


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ensure_openssh() -> str | None:
    """Path of sshd, installing Debian's openssh-server when missing and allowed (root + apt-get)."""
    sshd = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
    if sshd is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-qq", "openssh-server", "openssh-client"], env=env,
                       capture_output=True, timeout=600)
        sshd = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
    return sshd if sshd and shutil.which("ssh") and shutil.which("ssh-keygen") else None


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """sshd -D on 127.0.0.1:FREEPORT as the current user, with a throwaway host key and user key."""
    binary = _ensure_openssh()
    if binary is None:
        pytest.skip("OpenSSH server not installed (apt-get install openssh-server openssh-client)")
    d = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    shutil.copy(d / "user_key.pub", d / "authorized_keys")
    port = _free_port()
    (d / "sshd_config").write_text("\n".join([
        "ListenAddress 127.0.0.1", f"HostKey {d / 'host_key'}", f"PidFile {d / 'sshd.pid'}",
        f"AuthorizedKeysFile {d / 'authorized_keys'}", "PubkeyAuthentication yes", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", "PermitRootLogin prohibit-password",
        "LogLevel ERROR", ""]))
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation folder sshd needs as root
    proc = subprocess.Popen([binary, "-D", "-e", "-f", str(d / "sshd_config"), "-p", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 20
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"sshd exited: {proc.stdout.read().decode()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    host_pub = (d / "host_key.pub").read_text().split()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    target = dict(host="127.0.0.1", user=getpass.getuser(), port=port, identity_file=str(d / "user_key"),
                  strict_host_key_checking="yes", known_hosts_file=str(d / "known_hosts"), ssh_config="none",
                  python=sys.executable)
    yield target
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def model_onnx(tmp_path_factory):
    from edgeslim.export import export_onnx
    from edgeslim.models import build_model

    path = tmp_path_factory.mktemp("model") / "resnet20.onnx"
    return export_onnx(build_model("zoo:resnet20").eval(), torch.randn(1, 3, 32, 32), path).path


def test_remote_bench_of_an_onnx_file(sshd, model_onnx):
    result = remote_bench(model_onnx, SSHTarget(**sshd), runtime="ort", runs=10, warmup=2)
    assert result["runtime"] == "ort" and result["runs"] == 10
    assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p99"]
    assert result["remote"]["host"] == "127.0.0.1" and result["remote"]["path"].endswith("model.onnx")
    # The temporary remote folder is gone afterwards.
    assert not os.path.exists(os.path.dirname(result["remote"]["path"]))


def test_hostile_paths_are_passed_safely(sshd, model_onnx, tmp_path):
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    # The local name never reaches a shell; the remote folder goes through the remote shell, quoted.
    local = tmp_path / "a b 'c' \"d\" ;rm -rf sentinel; $(touch pwned) `touch pwned2` &.onnx"
    shutil.copy(model_onnx, local)
    workdir = f"{tmp_path}/remote 'x' \"y\" ;rm -rf {sentinel}; $(touch {tmp_path}/pwned) `touch {tmp_path}/pwned2` &"
    result = remote_bench(local, SSHTarget(**sshd, workdir=workdir), runtime="ort", runs=5, warmup=1)
    assert result["latency_ms"]["p50"] > 0
    assert sentinel.is_dir(), "a command injected through a path ran"
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()
    assert Path(workdir, "model.onnx").read_bytes() == Path(model_onnx).read_bytes()


def test_unknown_host_key_is_refused(sshd, model_onnx, tmp_path):
    (tmp_path / "empty_known_hosts").write_text("")
    target = SSHTarget(**{**sshd, "known_hosts_file": str(tmp_path / "empty_known_hosts")})
    with pytest.raises(RemoteError, match="Host key verification failed"):
        remote_bench(model_onnx, target, runs=2)


def test_bench_cli_remote(sshd, model_onnx, capsys):
    from edgeslim.cli import main  # in-process here; the remote side runs `python -m edgeslim bench`

    code = main(["bench", model_onnx, "--runs", "5", "--warmup", "1", "--json",
                 "--remote", f"{sshd['user']}@127.0.0.1", "--ssh-port", str(sshd["port"]), "--ssh-key",
                 sshd["identity_file"], "--ssh-known-hosts", sshd["known_hosts_file"], "--ssh-strict", "yes",
                 "--ssh-option", "LogLevel=ERROR", "--remote-python", sys.executable])
    out = capsys.readouterr()
    assert code == 0, out.err
    r = json.loads(out.out)
    assert r["runs"] == 5 and r["remote"]["port"] == sshd["port"] and {"p50", "p90", "p99"} <= set(r["latency_ms"])


def test_target_validation():
    with pytest.raises(ValueError, match="host"):
        SSHTarget(host="-oProxyCommand=touch /tmp/x")
    with pytest.raises(ValueError, match="user"):
        SSHTarget.parse("-l root@host")
    with pytest.raises(ValueError, match="option"):
        SSHTarget(host="h", options={"Proxy Command": "x"})
    argv = SSHTarget(host="board", user="me", port=2222).ssh_command("echo hi")
    assert argv[argv.index("--") + 1:] == ["me@board", "echo hi"]
    assert "BatchMode=yes" in argv and "StrictHostKeyChecking=accept-new" in argv
