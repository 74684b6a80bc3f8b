"""Run ``edgeslim`` under torchrun while recording which rank writes which file.

Every ``torch.save`` still happens (the real function is called); the probe only appends
the path of each file written to PROBE_DIR/writes-rank{RANK}.txt so that a test can check that rank 0 alone
wrote checkpoints. Used by tests/test_finetune.py::test_ddp_*.
"""
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


torch.save = _recording_save

if __name__ == "__main__":
    from edgeslim.cli import main

    sys.exit(main(sys.argv[1:]))
