"""A reader for the IDX format of MNIST and Fashion-MNIST (optionally gzip-compressed), numpy only.

Layout: two zero bytes, a type code, the number of dimensions, each dimension as a big-endian uint32,
then the values in C order, big-endian.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from slimkit.errors import DataError

_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def parse_idx(data: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes into an array (native byte order). Raises :class:`DataError` for a bad magic
    number, an unknown type code, or a payload whose size does not match the header."""
    if len(data) < 4:
        raise DataError(f"{source} is not an IDX file: {len(data)} bytes, shorter than the 4-byte header.")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or code not in _DTYPES or ndim == 0:
        raise DataError(f"{source} is not an IDX file: magic {data[:4].hex()} (expected 0000 + type code "
                        f"in {[hex(c) for c in _DTYPES]} + number of dimensions).")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{source} is truncated: header needs {header} bytes, file has {len(data)}.")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _DTYPES[code]
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise DataError(f"{source} is {what}: shape {tuple(dims)} needs {expected} bytes, file has {len(data)}.",
                        hint="Reinstall the dataset (the download or copy was probably interrupted).")
    arr = np.frombuffer(data, dtype=dtype, count=int(np.prod(dims, dtype=np.int64)), offset=header)
    return arr.reshape(dims).astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` is decompressed). Raises :class:`DataError` when it is missing,
    truncated or malformed."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if path.suffix == ".gz" or raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise DataError(f"{path} is truncated or not valid gzip ({exc}).",
                            hint="Reinstall the dataset (the download or copy was probably interrupted).") from None
    return parse_idx(raw, source=str(path))


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write ``array`` as IDX (gzip-compressed when ``path`` ends in ``.gz``). Useful for tests and for
    bringing your own data in MNIST form."""
    path = Path(path)
    arr = np.asarray(array)
    code = next((c for c, dt in _DTYPES.items() if dt.kind == arr.dtype.kind and dt.itemsize == arr.dtype.itemsize),
                None)
    if code is None:
        raise DataError(f"IDX cannot store dtype {arr.dtype}.")
    header = struct.pack(">HBB", 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.astype(_DTYPES[code], copy=False).tobytes()
    path.write_bytes(gzip.compress(data, compresslevel=1) if path.suffix == ".gz" else data)
    return path
