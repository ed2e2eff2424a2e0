"""Checkpoint files: named host arrays plus one JSON metadata dict in an ``.npz``.

Format (``FORMAT_VERSION = 1``): an uncompressed zip of ``.npy`` entries, one per array,
plus ``__meta__.npy``, a 0-d unicode array holding the JSON text of
``{"format_version": 1, **meta}``. Nothing in it is pickled, so plain
``np.load(path, allow_pickle=False)`` opens it too. Names starting with ``__`` are reserved.

This module knows nothing about models: the caller converts device arrays to numpy first
and decides what the names mean.

Writes are atomic: the archive goes to ``.<name>.tmp-<pid>`` in the same directory, is
fsync'ed, then ``os.replace``'d onto the final name and the directory fsync'ed. A crash or
a full disk at any moment leaves the previous checkpoint under that name intact. A writer
killed outright leaves its temporary file behind; :func:`remove_stale_temps` removes those
whose process is gone (the run directory does so when it is next opened). Text files
(a run's config.json, metrics.jsonl) are written the same way by :func:`write_text`.

Reads trust nothing: every way a file can be missing, cut short, corrupted, too new or
hold pickled objects becomes a :class:`CheckpointError` naming the file, and each entry's
header is checked against the zip's own sizes before any array memory is allocated.
:func:`read_npz` is that reader for every ``.npz`` scratchvae opens (one's own data, codes,
models, checkpoints), raising the caller's error class, so a damaged file is "damaged or
truncated" whichever verb reads it.

Run directories hold ``epoch-0003.npz`` (end of epoch 3) and ``epoch-0004-batch-000120.npz``
(inside epoch 4, after 120 of its batches); :func:`list_checkpoints` orders them by training
progress, so the latter comes after the former.
"""

import json
import math
import os
import re
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from . import faults
from .errors import CheckpointError

FORMAT_VERSION = 1
META_KEY = "__meta__"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_NUMERIC_KINDS = "biufc"  # bool, int, uint, float, complex
_MISSING = object()

# What a damaged file can make numpy's zip/npy readers raise. Bugs of ours (TypeError,
# AttributeError, ...) are deliberately not here and keep their tracebacks.
_READ_ERRORS = (
    OSError, EOFError, ValueError, KeyError, IndexError, OverflowError,
    zipfile.BadZipFile, zipfile.LargeZipFile, struct.error, zlib.error,
    NotImplementedError,  # zipfile: unsupported compression / patched data
    RuntimeError,  # zipfile: "File ... is encrypted, password required"
)


# ---------------------------------------------------------------------------- save

def _check_arrays(arrays, kinds=_NUMERIC_KINDS):
    if not isinstance(arrays, dict):
        raise CheckpointError(f"arrays must be a dict of name -> numpy array, got {type(arrays).__name__}")
    for name, arr in arrays.items():
        if not isinstance(name, str) or not name:
            raise CheckpointError(f"array names must be non-empty strings, got {name!r}")
        if name.startswith("__"):
            raise CheckpointError(f"array name {name!r} is reserved (names starting with '__')")
        if "\x00" in name:
            raise CheckpointError(f"array name {name!r} contains a NUL character")
        if not isinstance(arr, np.ndarray):
            kind = f"{type(arr).__module__}.{type(arr).__qualname__}"
            raise CheckpointError(
                f"arrays[{name!r}] must be a numpy array, got {kind}; "
                "convert device arrays to host first (e.g. cupy.asnumpy)"
            )
        if arr.dtype.kind not in kinds:
            raise CheckpointError(
                f"arrays[{name!r}] must have a numeric dtype (bool/int/uint/float/complex"
                f"{'' if kinds == _NUMERIC_KINDS else '/unicode'}), "
                f"got {arr.dtype}"
            )


def _meta_json(meta):
    if not isinstance(meta, dict):
        raise CheckpointError(f"meta must be a dict, got {type(meta).__name__}")
    if "format_version" in meta:
        raise CheckpointError("meta key 'format_version' is reserved; the checkpoint writes it")
    try:
        return json.dumps({"format_version": FORMAT_VERSION, **meta}, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"meta must be JSON-serializable: {exc}") from None


def _write_npz(f, arrays, meta_text):
    """What ``np.savez`` writes, without its ``file=``/``allow_pickle=`` keyword clash."""
    entries = [(META_KEY, np.array(meta_text))] + list(arrays.items())
    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in entries:
            with zf.open(name + ".npy", mode="w", force_zip64=True) as entry:
                np.lib.format.write_array(entry, arr, allow_pickle=False)


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(path):
    """``.<name>.tmp-<pid>`` beside ``path``: where this process writes before renaming."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


_TEMP_RE = re.compile(r"\.(.+)\.tmp-(\d+)")


def _alive(pid):
    """Whether process ``pid`` may still run (anything but a clear 'no such process' is yes)."""
    if pid == os.getpid() or os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_stale_temps(directory, name=None):
    """Remove the temporary files (or folders) ``.<name>.tmp-<pid>`` in ``directory`` whose
    writer process no longer exists; only those of ``name`` if given. Returns what was removed;
    one that cannot be removed is left (a read-only folder is no error)."""
    directory, removed = Path(directory), []
    if not directory.is_dir():
        return removed
    for p in directory.iterdir():
        m = _TEMP_RE.fullmatch(p.name)
        if m is None or (name is not None and m.group(1) != name) or _alive(int(m.group(2))):
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        except OSError:
            continue
        removed.append(p)
    return removed


def write_text(path, text):
    """Write ``text`` to ``path`` atomically (a temporary file, fsync, rename, fsync of the folder)."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def save_checkpoint(path, arrays, meta, text=False):
    """Atomically write ``arrays`` (name -> numpy array) and JSON ``meta`` to ``path``.

    Returns the final ``Path``. Raises CheckpointError for a non-numpy or non-numeric
    array (``text``: unicode string arrays too, such as the class names of codes; never
    objects), a reserved name, unserializable meta, or any OS error while writing (the
    temporary file is removed and any earlier file at ``path`` is untouched).
    """
    path = Path(path)
    _check_arrays(arrays, _NUMERIC_KINDS + ("U" if text else ""))
    meta_text = _meta_json(meta)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            _write_npz(f, arrays, meta_text)
            f.flush()
            os.fsync(f.fileno())
        faults.point("after-temp-write")
        faults.point("before-rename")
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, Exception):
            raise CheckpointError(f"could not write checkpoint {path}: {exc}") from exc
        raise
    return path


# ---------------------------------------------------------------------------- load

class _Refused(Exception):
    """An entry that reads fine but is not what an .npz of scratchvae may hold (the message's tail)."""


_NPY_MAGIC = b"\x93NUMPY"
_DEFLATED_OK = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)


def _entry_header(zf, info, file_size, compressed):
    """(shape, dtype) of one ``.npy`` entry, checked against the zip's sizes; deflated entries
    only where ``compressed``."""
    if info.compress_type not in (_DEFLATED_OK if compressed else (zipfile.ZIP_STORED,)):
        raise ValueError(f"entry {info.filename!r} is compressed (method {info.compress_type})")
    if info.flag_bits & 0x1:
        raise ValueError(f"entry {info.filename!r} is encrypted")
    stored = info.compress_type == zipfile.ZIP_STORED
    if (stored and info.compress_size != info.file_size) or info.header_offset + info.compress_size > file_size:
        raise ValueError(f"entry {info.filename!r} claims {info.file_size} bytes, more than the file holds")
    with zf.open(info) as fp:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise ValueError(f"entry {info.filename!r} has unsupported .npy version {version}")
        header_len = fp.tell()
    if dtype.hasobject:
        raise _Refused(f"entry {info.filename[:-4]!r} holds pickled Python objects; refusing to load it "
                       "(only numeric arrays are read)")
    if header_len + math.prod(shape) * dtype.itemsize != info.file_size:
        raise ValueError(f"entry {info.filename!r}: header shape {shape} {dtype} does not match its size")
    return shape, dtype


def _file_size(path, what, error):
    """The size of the file at ``path`` once it looks like an .npz; else ``error`` saying what it is."""
    try:
        with open(path, "rb") as f:
            magic = f.read(len(_NPY_MAGIC))
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise error(f"{what} {path} is a folder, not an .npz file") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if size == 0:
        raise error(f"{what} {path} is empty (0 bytes)")
    if magic.startswith(_NPY_MAGIC):
        raise error(f"{what} {path} is not an .npz archive (it is a .npy file, one array: np.savez writes "
                    f"an .npz of named arrays)")
    if magic[:4] not in _ZIP_MAGIC:
        raise error(f"{what} {path} is not an .npz archive (starts with {magic[:4]!r})")
    return size


def read_npz(path, *, what="checkpoint", error=CheckpointError, names=None, compressed=False):
    """The entries of the .npz at ``path`` (name -> array), read eagerly; only those of ``names``
    if given (the others are not read). The one reader of every .npz scratchvae opens.

    Trusts nothing: a file that is missing, a folder, empty, not a zip, cut short or corrupted
    (a failed CRC), an entry whose header disagrees with the zip's sizes, or pickled objects,
    each raise ``error`` naming ``what`` and the file ("damaged or truncated" for what the zip
    and .npy readers reject). ``compressed``: deflated entries (``np.savez_compressed``) are
    read too; checkpoints are stored uncompressed.
    """
    path = Path(path)
    file_size = _file_size(path, what, error)
    try:
        with np.load(path, allow_pickle=False) as npz:
            infos = npz.zip.infolist()
            found = [i.filename for i in infos]
            if len(set(found)) != len(found):
                raise ValueError("duplicate entry names")
            for name in found:
                if not name.endswith(".npy"):
                    raise ValueError(f"unexpected entry {name!r}")
            headers = {i.filename[:-4]: _entry_header(npz.zip, i, file_size, compressed) for i in infos
                       if names is None or i.filename[:-4] in names}
            entries = {}
            for key, (shape, dtype) in headers.items():
                arr = npz[key]
                if not isinstance(arr, np.ndarray) or arr.shape != shape or arr.dtype != dtype:
                    raise ValueError(f"entry {key!r} did not read back as its header says")
                entries[key] = arr
    except _Refused as exc:
        raise error(f"{what} {path}: {exc}") from None
    except _READ_ERRORS as exc:
        raise error(f"{what} {path} is damaged or truncated ({type(exc).__name__}: {exc})") from None
    return entries


def _parse_meta(path, entries):
    raw = entries.pop(META_KEY, None)
    if raw is None:
        raise CheckpointError(f"checkpoint {path} has no {META_KEY} entry; not a scratchvae checkpoint")
    if raw.ndim != 0 or raw.dtype.kind != "U":
        raise CheckpointError(
            f"checkpoint {path}: {META_KEY} must be a 0-d string, got {raw.dtype} {raw.shape}"
        )
    try:
        meta = json.loads(str(raw[()]))
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path}: metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(
            f"checkpoint {path}: metadata must be a JSON object, got {type(meta).__name__}"
        )
    version = meta.pop("format_version", _MISSING)
    if version is _MISSING:
        raise CheckpointError(f"checkpoint {path}: metadata has no format_version")
    if type(version) is int and version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} was written by a newer scratchvae "
            f"(format {version} > {FORMAT_VERSION}); upgrade scratchvae to read it"
        )
    if type(version) is not int or version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path}: unknown format_version {version!r}")
    return meta


def check_arrays(path, arrays, expected):
    """Raise one CheckpointError listing every array of ``expected`` (name -> (shape, dtype))
    that ``arrays`` lacks or holds with another shape or dtype (for callers that learn what
    to expect only from the checkpoint's metadata)."""
    problems = []
    missing = [name for name in expected if name not in arrays]
    if missing:
        problems.append("missing arrays: " + ", ".join(missing))
    for name, (shape, dtype) in expected.items():
        if name not in arrays:
            continue
        shape, dtype, arr = tuple(shape), np.dtype(dtype), arrays[name]
        if arr.shape != shape or arr.dtype != dtype:
            problems.append(f"{name}: expected shape {shape} {dtype}, got {arr.shape} {arr.dtype}")
    if problems:
        raise CheckpointError(
            f"checkpoint {path} does not match what was expected:\n  - " + "\n  - ".join(problems)
        )


def load_checkpoint(path, *, expected=None):
    """Read a checkpoint written by :func:`save_checkpoint`; returns ``(arrays, meta)``.

    All arrays are read into memory and the file closed. ``meta`` is the dict given to
    ``save_checkpoint`` (``format_version`` is checked and removed). ``expected`` maps
    name -> (shape, dtype string); every missing array and every shape/dtype mismatch is
    reported in one CheckpointError. Arrays not named in ``expected`` are returned as well.
    """
    path = Path(path)
    entries = read_npz(path)
    meta = _parse_meta(path, entries)
    for name, arr in entries.items():
        if name.startswith("__"):
            raise CheckpointError(f"checkpoint {path}: unknown reserved entry {name!r}")
        if arr.dtype.kind not in _NUMERIC_KINDS:
            raise CheckpointError(f"checkpoint {path}: array {name!r} has non-numeric dtype {arr.dtype}")
    if expected is not None:
        check_arrays(path, entries, expected)
    return entries, meta


def read_meta(path):
    """Only the metadata of the checkpoint at ``path`` (its arrays are not read)."""
    path = Path(path)
    return _parse_meta(path, read_npz(path, names=(META_KEY,)))


# ---------------------------------------------------------------------------- config

def _flatten(d, prefix=""):
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _same(a, b):
    """JSON-value equality: lists == tuples, 1 == 1.0, but True != 1 and NaN == NaN."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b or (a != a and b != b)  # NaN: a != a
    return type(a) is type(b) and a == b


def _show(value):
    if value is _MISSING:
        return "nothing"
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def config_differences(saved, current):
    """Lines ``key: checkpoint has X, model has Y`` for each differing key.

    Nested dicts are compared key by key under dotted names (``optim.lr``); a key present
    on one side only shows ``nothing`` on the other. Values compare as JSON does after a
    round trip: tuples equal lists and 1 equals 1.0, but True differs from 1.
    """
    flat_saved, flat_current = _flatten(saved), _flatten(current)
    lines = []
    for key in sorted(flat_saved.keys() | flat_current.keys()):
        a, b = flat_saved.get(key, _MISSING), flat_current.get(key, _MISSING)
        if a is _MISSING or b is _MISSING or not _same(a, b):
            lines.append(f"{key}: checkpoint has {_show(a)}, model has {_show(b)}")
    return lines


# ---------------------------------------------------------------------------- run directories

_NAME_RE = re.compile(r"epoch-(\d{4,})(?:-batch-(\d{6,}))?\.npz")


def _check_count(what, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CheckpointError(f"{what} must be a non-negative int, got {value!r}")


def checkpoint_name(epoch, batch=None):
    """``epoch-0003.npz`` after epoch 3; ``epoch-0003-batch-000120.npz`` inside it after 120 batches."""
    _check_count("epoch", epoch)
    if batch is None:
        return f"epoch-{epoch:04d}.npz"
    _check_count("batch", batch)
    return f"epoch-{epoch:04d}-batch-{batch:06d}.npz"


def checkpoint_position(name):
    """``(epoch, batch)`` a checkpoint's file name stands for (batch None at an epoch's end), or
    None for any other name (temporary files, non-canonical spellings such as epoch-00003.npz)."""
    m = _NAME_RE.fullmatch(name)
    if m is None:
        return None
    epoch = int(m.group(1))
    batch = None if m.group(2) is None else int(m.group(2))
    if checkpoint_name(epoch, batch) != name:
        return None
    return epoch, batch


def _progress(name):
    """(epoch, batch) sort key; end of epoch sorts after all its mid-epoch checkpoints."""
    pos = checkpoint_position(name)
    if pos is None:
        return None
    return (pos[0], math.inf if pos[1] is None else pos[1])


def list_checkpoints(ckpt_dir):
    """Checkpoint files in ``ckpt_dir``, oldest training progress first ([] if none).

    Temporary files (``.<name>.tmp-<pid>``) and unrelated files are ignored.
    """
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.exists():
        return []
    if not ckpt_dir.is_dir():
        raise CheckpointError(f"checkpoint directory {ckpt_dir} is not a directory")
    found = []
    for p in ckpt_dir.iterdir():
        key = _progress(p.name)
        if key is not None and p.is_file():
            found.append((key, p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(ckpt_dir, epoch=None, finished=False):
    """The newest checkpoint in ``ckpt_dir``, or the end-of-epoch checkpoint of ``epoch``; with
    ``finished``, the newest end-of-epoch checkpoint (a mid-epoch one is a model between two
    epochs' ends)."""
    found = list_checkpoints(ckpt_dir)
    if not found:
        raise CheckpointError(f"no checkpoints in {ckpt_dir}")
    ends = [_progress(p.name)[0] for p in found if _progress(p.name)[1] == math.inf]
    if epoch is None and not finished:
        return found[-1]
    if epoch is None and ends:
        return Path(ckpt_dir) / checkpoint_name(ends[-1])
    if epoch is None:
        raise CheckpointError(f"no end-of-epoch checkpoint in {ckpt_dir} yet; the newest is {found[-1].name}, "
                              f"inside epoch {_progress(found[-1].name)[0]} (name it with --checkpoint to use it)")
    wanted = Path(ckpt_dir) / checkpoint_name(epoch)
    if wanted in found:
        return wanted
    available = ", ".join(map(str, ends)) if ends else "none"
    raise CheckpointError(
        f"no end-of-epoch checkpoint for epoch {epoch} in {ckpt_dir}; "
        f"available epochs: {available} (newest: {found[-1].name})"
    )
