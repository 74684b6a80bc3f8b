"""Run ``edgeslim`` under torchrun while recording which rank writes which file.

Every ``torch.save`` still happens (the real function is called); the probe only appends
the path of each file written to PROBE_DIR/writes-rank{RANK}.txt so that a test can check that rank 0 alone
wrote checkpoints. At exit it also lists the process's native threads in PROBE_DIR/threads-rank{RANK}.txt:
process-group threads still running when the interpreter shuts down can abort the process.
Used by tests/test_finetune.py::test_ddp_*.
"""
import atexit
import os
import sys
from pathlib import Path

import torch

_real_save = torch.save


def _recording_save(obj, f, *args, **kwargs):
    if isinstance(f, (str, os.PathLike)):  # files only; collectives also torch.save into memory buffers
        log = Path(os.environ["PROBE_DIR"]) / f"writes-rank{os.environ.get('RANK', '0')}.txt"
        with open(log, "a") as out:
            out.write(f"{f}\n")
    return _real_save(obj, f, *args, **kwargs)


def _thread_names() -> list[str]:
    names = []
    tasks = Path("/proc/self/task")
    for task in tasks.iterdir() if tasks.is_dir() else []:
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:  # the thread ended between the listing and the read: it is gone, as it should be
            pass
    return names


def _record_threads():
    names = _thread_names()
    (Path(os.environ["PROBE_DIR"]) / f"threads-rank{os.environ.get('RANK', '0')}.txt").write_text("\n".join(names))


torch.save = _recording_save
atexit.register(_record_threads)

if __name__ == "__main__":
    from edgeslim.cli import main

    sys.exit(main(sys.argv[1:]))
