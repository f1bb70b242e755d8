"""A small safetensors reader/writer: memory-mapped, one tensor at a time, with errors that name the tensor.

Format (https://huggingface.co/docs/safetensors): 8-byte little-endian header length ``n``, ``n``
bytes of JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}``,
then the data (offsets relative to the end of the header). Written here rather than through the
``safetensors`` package because (a) its numpy API cannot return bfloat16, (b) a loader that streams
must hold one tensor at a time and hand the pages back (``madvise``) once the tensor is on the device,
and (c) a truncated or inconsistent file must fail with the tensor's name before any bytes are read.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from typing import Any, Callable, Mapping, Optional, Union

import ml_dtypes
import numpy as np

__all__ = ["CheckpointError", "SafetensorsFile", "TensorDir", "save_file", "DTYPES"]

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U64": np.dtype(np.uint64),
    "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_CODES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 2**20


class CheckpointError(ValueError):
    """A checkpoint file or directory is missing, truncated, inconsistent or of another version."""


def _page_down(x: int) -> int:
    return x - x % mmap.PAGESIZE


class SafetensorsFile:
    """One ``.safetensors`` file, header parsed and checked on open, tensors read lazily via ``mmap``.

    ``get(name)`` returns a read-only numpy view into the mapping (no copy); ``release(name)``
    tells the kernel the pages are no longer needed, so a streaming loader's resident memory
    stays about one tensor.
    """

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = os.fspath(path)
        try:
            self._f = open(self.path, "rb")
        except FileNotFoundError:
            raise CheckpointError(f"{self.path}: no such file") from None
        try:
            self._open()
        except BaseException:
            self._f.close()
            raise

    def _open(self) -> None:
        size = os.fstat(self._f.fileno()).st_size
        if size < 8:
            raise CheckpointError(f"{self.path}: {size} bytes, not a safetensors file (truncated?)")
        (n,) = struct.unpack("<Q", self._f.read(8))
        if n > min(size - 8, _MAX_HEADER):
            raise CheckpointError(f"{self.path}: header length {n} does not fit in the file ({size} bytes): truncated or not safetensors")
        try:
            header = json.loads(self._f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{self.path}: unreadable header ({e})") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: header is not a JSON object")
        self.metadata: dict[str, str] = dict(header.pop("__metadata__", None) or {})
        self._start = 8 + n
        data_size = size - self._start
        self._entries: dict[str, tuple[np.dtype, tuple[int, ...], int, int]] = {}
        for name, e in header.items():
            try:
                dt, shape, (b, end) = DTYPES[e["dtype"]], tuple(int(s) for s in e["shape"]), e["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{self.path}: tensor {name!r} has a malformed header entry {e!r}") from None
            want = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
            if end - b != want or b < 0:
                raise CheckpointError(f"{self.path}: tensor {name!r} {e['dtype']}{list(shape)} needs {want} bytes, header says {end - b}")
            if end > data_size:
                raise CheckpointError(
                    f"{self.path}: tensor {name!r} ends at byte {self._start + end} but the file has {size} bytes (truncated file)"
                )
            self._entries[name] = (dt, shape, self._start + b, want)
        self._mm = mmap.mmap(self._f.fileno(), 0, access=mmap.ACCESS_READ) if size else None

    def keys(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def info(self, name: str) -> tuple[np.dtype, tuple[int, ...]]:
        dt, shape, _, _ = self._entry(name)
        return dt, shape

    def _entry(self, name):
        try:
            return self._entries[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: no tensor {name!r}") from None

    def get(self, name: str) -> np.ndarray:
        dt, shape, off, nbytes = self._entry(name)
        return np.frombuffer(self._mm, dtype=dt, count=nbytes // dt.itemsize, offset=off).reshape(shape)

    def release(self, name: str) -> None:
        """Drop the resident pages of ``name`` (they are re-read from the file if needed again)."""
        _, _, off, nbytes = self._entry(name)
        lo = _page_down(off)
        if nbytes and hasattr(self._mm, "madvise"):
            self._mm.madvise(mmap.MADV_DONTNEED, lo, off + nbytes - lo)

    def close(self) -> None:
        try:
            if self._mm is not None:
                self._mm.close()
        except BufferError:  # a caller still holds a view; the mapping goes with it
            pass
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class TensorDir:
    """A checkpoint directory: ``model.safetensors.index.json`` (sharded) or every ``*.safetensors`` file."""

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = os.fspath(path)
        if not os.path.isdir(self.path):
            raise CheckpointError(f"{self.path}: not a directory")
        index = os.path.join(self.path, "model.safetensors.index.json")
        self.files: dict[str, SafetensorsFile] = {}
        self._where: dict[str, str] = {}
        if os.path.exists(index):
            with open(index) as f:
                wmap = json.load(f).get("weight_map", {})
            for fname in sorted(set(wmap.values())):
                self.files[fname] = SafetensorsFile(os.path.join(self.path, fname))
            for name, fname in wmap.items():
                if name not in self.files[fname]:
                    raise CheckpointError(f"{self.path}: index maps tensor {name!r} to {fname}, which does not contain it")
                self._where[name] = fname
        else:
            names = sorted(n for n in os.listdir(self.path) if n.endswith(".safetensors"))
            if not names:
                raise CheckpointError(f"{self.path}: no *.safetensors files and no model.safetensors.index.json")
            for fname in names:
                sf = SafetensorsFile(os.path.join(self.path, fname))
                self.files[fname] = sf
                for name in sf.keys():
                    self._where.setdefault(name, fname)

    @property
    def metadata(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for sf in self.files.values():
            out.update(sf.metadata)
        return out

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def file_of(self, name: str) -> SafetensorsFile:
        try:
            return self.files[self._where[name]]
        except KeyError:
            raise CheckpointError(f"{self.path}: tensor {name!r} is missing (files: {', '.join(self.files)})") from None

    def info(self, name: str):
        return self.file_of(name).info(name)

    def get(self, name: str) -> np.ndarray:
        return self.file_of(name).get(name)

    def release(self, name: str) -> None:
        self.file_of(name).release(name)

    def close(self) -> None:
        for sf in self.files.values():
            sf.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


TensorSource = Union[np.ndarray, Callable[[], Any], Any]


def save_file(
    path: Union[str, os.PathLike],
    tensors: Mapping[str, tuple[Any, tuple[int, ...], TensorSource]],
    metadata: Optional[Mapping[str, str]] = None,
) -> None:
    """Write ``{name: (dtype, shape, source)}`` to ``path``, one tensor in host memory at a time.

    ``source`` is an array (numpy or JAX) or a zero-argument callable returning one, fetched
    only when its bytes are written. The file is written to ``path + ".tmp"`` and renamed, so a
    crash never leaves a half-written file under the final name.
    """
    path = os.fspath(path)
    header: dict[str, Any] = {}
    off = 0
    plan = []
    for name, (dtype, shape, src) in tensors.items():
        dt = np.dtype(dtype)
        if dt not in _CODES:
            raise CheckpointError(f"tensor {name!r}: dtype {dt} has no safetensors code")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        header[name] = {"dtype": _CODES[dt], "shape": [int(s) for s in shape], "data_offsets": [off, off + nbytes]}
        plan.append((name, dt, tuple(int(s) for s in shape), src))
        off += nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, dt, shape, src in plan:
            arr = np.asarray(src() if callable(src) else src)
            if arr.dtype != dt or arr.shape != shape:
                raise CheckpointError(f"tensor {name!r}: got {arr.dtype}{list(arr.shape)}, declared {dt}{list(shape)}")
            f.write(np.ascontiguousarray(arr).tobytes())
            del arr
    os.replace(tmp, path)

