"""Re-read a Hugging Face safetensors folder's headers and report tensors and bytes.

    python3 tools/realscale/check_sparse.py DIR [DIR ...] [--json]

An independent reader (struct + json only, no code shared with make_sparse.py): for every
*.safetensors file it reads the 8-byte little-endian header length and the JSON header, and
checks what the safetensors format requires - the header is valid UTF-8 JSON padded with spaces,
"__metadata__" (if any) maps strings to strings, every tensor has a known dtype, a shape and
data_offsets whose size is numel * dtype size, the offsets tile the data section from 0 without
gaps or overlaps, and the file is exactly 8 + header + data long. With a
model.safetensors.index.json it also checks that the weight map names exactly the tensors each
file holds and that metadata.total_size is the sum of their bytes. Reads no tensor data.

Prints one line per folder (tensors, bytes, per-dtype counts, files), or with --json one JSON
object per folder, so tests can compare nembridge's plan totals against the header totals.
Exits 1 on the first violation, naming the file and tensor.
"""
from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
         "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8}


class Bad(Exception):
    pass


def read_header(path):
    size = os.stat(path).st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise Bad(f"{path.name}: shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000 or 8 + n > size:
            raise Bad(f"{path.name}: header length {n} does not fit a {size}-byte file")
        blob = f.read(n)
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Bad(f"{path.name}: header is not UTF-8 ({e})") from None
    if text.rstrip(" ") != text.rstrip():
        raise Bad(f"{path.name}: header padded with something other than spaces")
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates(path))
    except json.JSONDecodeError as e:
        raise Bad(f"{path.name}: header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise Bad(f"{path.name}: header is not an object")
    return n, size, header


def _no_duplicates(path):
    def hook(pairs):
        d = {}
        for k, v in pairs:
            if k in d:
                raise Bad(f"{path.name}: key {k!r} appears twice in the header")
            d[k] = v
        return d
    return hook


def check_file(path):
    """{name: (dtype, shape, nbytes)} of one file, after the format checks."""
    n, size, header = read_header(path)
    meta = header.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict) and
                                 all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())):
        raise Bad(f"{path.name}: __metadata__ is not a string-to-string map")
    spans, out = [], {}
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise Bad(f"{path.name}: tensor {name!r} has fields {sorted(info) if isinstance(info, dict) else info}")
        dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in SIZES:
            raise Bad(f"{path.name}: tensor {name!r} has unknown dtype {dtype!r}")
        if not all(isinstance(s, int) and s >= 0 for s in shape):
            raise Bad(f"{path.name}: tensor {name!r} has shape {shape}")
        numel = 1
        for s in shape:
            numel *= s
        if end < begin or end - begin != numel * SIZES[dtype]:
            raise Bad(f"{path.name}: tensor {name!r} data_offsets [{begin}, {end}] do not hold "
                      f"{numel} x {dtype}")
        spans.append((begin, end, name))
        out[name] = (dtype, shape, end - begin)
    cursor = 0
    for begin, end, name in sorted(spans):
        if begin != cursor:
            raise Bad(f"{path.name}: tensor {name!r} starts at {begin}, expected {cursor}")
        cursor = end
    if 8 + n + cursor != size:
        raise Bad(f"{path.name}: file is {size} bytes, header and data make {8 + n + cursor}")
    return out


def check_dir(folder):
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise Bad(f"{folder}: no .safetensors files")
    where, tensors = {}, {}
    for path in files:
        for name, t in check_file(path).items():
            if name in tensors:
                raise Bad(f"{path.name}: tensor {name!r} also in {where[name]}")
            where[name], tensors[name] = path.name, t
    total = sum(t[2] for t in tensors.values())
    index_path = folder / "model.safetensors.index.json"
    if index_path.exists():
        index = json.loads(index_path.read_text())
        wm = index.get("weight_map", {})
        if set(wm) != set(tensors):
            missing, extra = sorted(set(tensors) - set(wm)), sorted(set(wm) - set(tensors))
            raise Bad(f"{index_path.name}: weight_map misses {missing[:3]} / names absent {extra[:3]}")
        for name, fname in wm.items():
            if where[name] != fname:
                raise Bad(f"{index_path.name}: {name!r} mapped to {fname}, found in {where[name]}")
        ts = index.get("metadata", {}).get("total_size")
        if ts is not None and ts != total:
            raise Bad(f"{index_path.name}: total_size {ts} != {total} bytes of tensor data")
    by_dtype = {}
    for dtype, _, _ in tensors.values():
        by_dtype[dtype] = by_dtype.get(dtype, 0) + 1
    params = sum(_numel(t[1]) for t in tensors.values())
    disk = sum(os.stat(p).st_blocks * 512 for p in folder.iterdir() if p.is_file())
    return {"dir": str(folder), "tensors": len(tensors), "bytes": total, "parameters": params,
            "dtypes": dict(sorted(by_dtype.items())), "files": len(files), "disk_bytes": disk}


def _numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def main(argv=None):
    args = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in args
    dirs = [a for a in args if a != "--json"]
    if not dirs:
        print(__doc__.split("\n\n")[1].strip(), file=sys.stderr)
        return 2
    for d in dirs:
        try:
            r = check_dir(d)
        except Bad as e:
            print(f"check_sparse: error: {e}", file=sys.stderr)
            return 1
        if as_json:
            print(json.dumps(r, sort_keys=True))
        else:
            dt = ", ".join(f"{v} {k}" for k, v in r["dtypes"].items())
            print(f"{r['dir']}: {r['tensors']:,} tensors, {r['bytes']:,} bytes, {r['parameters']:,} "
                  f"parameters ({dt}), {r['files']} files, {r['disk_bytes']:,} bytes on disk")
    return 0


if __name__ == "__main__":
    sys.exit(main())
