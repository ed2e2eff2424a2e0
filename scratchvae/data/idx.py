"""Reader for IDX files (the MNIST / Fashion-MNIST container), raw or gzip-compressed.

An IDX file is a 4-byte magic ``0x00 0x00 <type> <ndims>``, then ``ndims`` big-endian
uint32 sizes, then the items in C order. Only what MNIST-like data uses is accepted:
type ``0x08`` (uint8) and 1 dimension (labels, ``(N,)``) or 3 (images, ``(N, rows, cols)``).

:func:`read_idx` returns the array in the shape the file declares; flattening images to
``(N, rows*cols)`` is the loader's job (:mod:`scratchvae.data.datasets`).

Every check happens before the payload is allocated: the header, the declared size against
``max_bytes``, and (for a raw file) the declared size against the file size. A gzip file's
decompressed size is not known in advance, so it is decompressed in chunks and never past
the declared size plus one byte: a gzip bomb stops there instead of filling memory.
"""

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from scratchvae.errors import DataError

#: The four IDX files of an MNIST-like dataset, without ``.gz``.
FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


#: Largest payload (bytes) a header may declare unless the caller passes ``max_bytes``.
MAX_PAYLOAD_BYTES = 2**31

_GZIP_MAGIC = b"\x1f\x8b"
_UINT8 = 0x08
_NDIMS = {1: "labels", 3: "images"}
_CHUNK = 1 << 20


def is_gzip(path):
    """Whether the file at ``path`` starts with the gzip magic bytes ``1f 8b``."""
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def read_idx(path, *, max_bytes=None):
    """Read an IDX file of uint8 items into a numpy array.

    Parameters
    ----------
    path : str or os.PathLike
        A raw IDX file or a gzip of one. Gzip is detected from the content (``1f 8b``), not
        the name; a ``.gz`` name over non-gzip content is an error.
    max_bytes : int, optional
        Refuse a header that declares a payload larger than this many bytes, before any
        allocation. Defaults to :data:`MAX_PAYLOAD_BYTES` (2**31).

    Returns
    -------
    numpy.ndarray of uint8
        ``(N,)`` for a 1-d file (labels), ``(N, rows, cols)`` for a 3-d file (images).

    Raises
    ------
    DataError
        Missing file, not gzip despite the ``.gz`` name, corrupt gzip, bad magic, unsupported
        type or number of dimensions, declared size over ``max_bytes``, truncated payload or
        trailing bytes. The message names the file, what was expected and what came.
    """
    path = Path(path)
    limit = MAX_PAYLOAD_BYTES if max_bytes is None else int(max_bytes)
    try:
        f = open(path, "rb")
    except OSError as err:
        raise DataError(f"cannot open IDX file {path}: {err.strerror or err}") from None
    with f:
        gz = f.read(2) == _GZIP_MAGIC
        f.seek(0)
        if not gz and path.suffix.lower() == ".gz":
            raise DataError(
                f"{path}: the name ends in .gz but the content is not gzip "
                f"(expected first bytes 1f 8b, got {_hex(f.read(2))})"
            )
        if not gz:
            return _read_stream(f, path, limit, os.fstat(f.fileno()).st_size)
        try:
            with gzip.GzipFile(fileobj=f, mode="rb") as g:
                return _read_stream(g, path, limit, None)
        except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError
            raise DataError(f"{path}: corrupt gzip stream: {err}") from None


def _read_stream(f, path, limit, file_size):
    """Parse header and payload from ``f``; ``file_size`` is None when it is unknown (gzip)."""
    what = "decompressed content" if file_size is None else "file"
    dims = _read_header(f, path, what)
    header = 4 + 4 * len(dims)
    payload = 1
    for d in dims:
        payload *= d
    shape = " x ".join(str(d) for d in dims)
    if payload > limit:
        raise DataError(
            f"{path}: header declares {shape} = {payload} bytes, more than the limit of "
            f"{limit} bytes (max_bytes); refusing to allocate"
        )
    if file_size is not None and file_size != header + payload:
        kind = "truncated" if file_size < header + payload else "trailing bytes after the payload"
        raise DataError(
            f"{path}: {kind}: expected {header + payload} bytes ({header}-byte header + "
            f"{shape} uint8 items), the file has {file_size}"
        )
    out = np.empty(payload, dtype=np.uint8)
    done = 0
    while done < payload:
        chunk = f.read(min(_CHUNK, payload - done))
        if not chunk:
            raise DataError(
                f"{path}: truncated: expected {header + payload} {what} bytes "
                f"({header}-byte header + {shape} uint8 items), got {header + done}"
            )
        out[done:done + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
        done += len(chunk)
    if f.read(1):
        raise DataError(
            f"{path}: trailing bytes after the payload: expected {header + payload} {what} "
            f"bytes ({header}-byte header + {shape} uint8 items), got more"
        )
    return out.reshape(dims)


def _read_header(f, path, what):
    """The magic number and the dimensions of an IDX stream -> the dimensions."""
    magic = f.read(4)
    if len(magic) < 4:
        raise DataError(
            f"{path}: {what} too short for an IDX header: expected at least 4 bytes, "
            f"got {len(magic)}"
        )
    if magic[0] != 0 or magic[1] != 0:
        raise DataError(
            f"{path}: bad IDX magic: expected 00 00 08 01 (labels) or 00 00 08 03 (images), "
            f"got {_hex(magic)}"
        )
    if magic[2] != _UINT8:
        raise DataError(
            f"{path}: unsupported IDX element type: expected 0x08 (uint8), got 0x{magic[2]:02x}"
        )
    ndims = magic[3]
    if ndims not in _NDIMS:
        raise DataError(
            f"{path}: expected 1 (labels) or 3 (images) IDX dimensions, got {ndims}"
        )
    raw_dims = f.read(4 * ndims)
    if len(raw_dims) < 4 * ndims:
        raise DataError(
            f"{path}: truncated IDX header: expected {4 + 4 * ndims} bytes for {ndims} "
            f"dimension(s), got {4 + len(raw_dims)}"
        )
    return struct.unpack(f">{ndims}I", raw_dims)


def _hex(b):
    return " ".join(f"{x:02x}" for x in b) or "nothing"


def find_idx_files(directory):
    """Map each of the four IDX names to ``directory/<name>`` or ``<name>.gz`` (raw first).

    Returns ``(found, missing)``: a ``{name: Path}`` dict and a list of names absent.
    """
    found, missing = {}, []
    for n in FILES:
        hit = next((p for p in (Path(directory) / n, Path(directory) / f"{n}.gz")
                    if p.is_file()), None)
        if hit is None:
            missing.append(n)
        else:
            found[n] = hit
    return found, missing
