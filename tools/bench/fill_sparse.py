"""Fill the data sections of a sparse real-scale folder (tools/realscale/make_sparse.py) with
weight-like values, in place, so the same headers describe a real checkpoint for `make bench`.

    .venv/bin/python tools/bench/fill_sparse.py DIR

BF16 tensors get normal(0, 0.02) values rounded to bfloat16, F32 tensors normal(0, 0.02) floats;
deterministic (one generator, seeded per file). Written in 64 MiB blocks, then fsynced.
"""
from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

import torch

BLOCK = 64 << 20
DTYPES = {"BF16": torch.bfloat16, "F32": torch.float32, "F16": torch.float16}


def fill(path: Path, seed: int) -> int:
    with open(path, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        start = 8 + n
        gen = torch.Generator().manual_seed(seed)
        written = 0
        for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0] if kv[0] != "__metadata__" else -1):
            if name == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            dtype = DTYPES[info["dtype"]]
            size = torch.tensor([], dtype=dtype).element_size()
            f.seek(start + begin)
            left = (end - begin) // size
            written += end - begin
            while left:
                count = min(left, BLOCK // size)
                values = torch.randn(count, generator=gen, dtype=torch.float32).mul_(0.02).to(dtype)
                f.write(values.view(torch.uint8).numpy().tobytes())
                left -= count
        f.flush()
        os.fsync(f.fileno())
        return written


def main() -> int:
    folder = Path(sys.argv[1])
    total = 0
    for i, path in enumerate(sorted(folder.glob("*.safetensors"))):
        total += fill(path, i)
    print(f"fill_sparse: {folder}: {total} bytes written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
