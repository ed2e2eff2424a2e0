"""Download MNIST-like IDX files from public mirrors, verified by SHA-256.

One try per mirror, in order. Each file is streamed into ``<name>.part`` in the target
directory and renamed to its final name (``<name>.gz``, or ``<name>`` if a mirror served it
uncompressed) only after the SHA-256 of the **decompressed** IDX bytes matches the pinned
value: the same bytes whichever mirror served the gzip. A mismatch deletes the ``.part`` and
raises :class:`ChecksumError`; a server error, timeout or dropped connection moves on to the
next mirror, and when all fail :class:`DownloadError` lists each mirror's failure.

Nothing is printed: pass ``progress(done_bytes, total_bytes_or_None)`` to be told how the
current file is going (it restarts at 0 for each file).

Fashion-MNIST's decompressed SHA-256 values are not pinned (no trustworthy published source
was found; its maintainers publish MD5s of the gzip files only), so downloading it raises
:class:`DownloadError` telling the user to fetch the files and pass ``data_dir``.
"""

import gzip
import hashlib
import http.client
import os
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from scratchvae.data.idx import MAX_PAYLOAD_BYTES, is_gzip
from scratchvae.errors import ChecksumError, DataError, DownloadError

#: The four IDX files of an MNIST-like dataset, without ``.gz``.
FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

#: Public mirrors, tried in order; ``<mirror><name>.gz`` is fetched.
MIRRORS = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
}

#: SHA-256 of each file's decompressed IDX bytes. Fashion-MNIST: deliberately empty (not pinned).
SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion-mnist": {},
}

_CHUNK = 1 << 16
# A download or its decompressed content larger than this is refused (largest IDX + header).
_MAX_BYTES = MAX_PAYLOAD_BYTES + 16


class _MirrorFailure(Exception):
    """This mirror did not deliver the file; try the next one."""


def payload_sha256(path):
    """SHA-256 (hex) of the file's content, decompressed first if it is gzip.

    Decompression streams in chunks and stops with :class:`DataError` past 2**31 + 16 bytes.
    A corrupt gzip stream is a :class:`DataError` naming the file.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
        f.seek(0)
        try:
            src = gzip.GzipFile(fileobj=f, mode="rb") if gz else f
            n = 0
            while chunk := src.read(_CHUNK):
                n += len(chunk)
                if n > _MAX_BYTES:
                    raise DataError(f"{path}: content exceeds {_MAX_BYTES} bytes, too large for IDX")
                h.update(chunk)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"{path}: corrupt gzip stream: {err}") from None
    return h.hexdigest()


def download_file(name, target_dir, *, mirrors, sha256, progress=None, timeout=10.0):
    """Fetch ``<mirror><name>.gz`` from the first mirror that delivers it, verified.

    Parameters
    ----------
    name : str
        File name without ``.gz``, e.g. ``"train-images-idx3-ubyte"``.
    target_dir : str or os.PathLike
        Directory to write into (created if missing).
    mirrors : sequence of str
        Base URLs, tried in order, one try each.
    sha256 : str
        Expected SHA-256 (hex) of the decompressed IDX bytes.
    progress : callable, optional
        ``progress(done_bytes, total_bytes_or_None)`` after each chunk received.
    timeout : float
        Seconds for the connection and for each read.

    Returns
    -------
    pathlib.Path
        ``target_dir/<name>.gz`` (or ``target_dir/<name>`` if the mirror sent raw IDX).

    Raises
    ------
    DataError
        ``target_dir`` cannot be created or written.
    ChecksumError
        A file arrived whole but its decompressed SHA-256 differs from ``sha256``.
    DownloadError
        ``sha256`` is missing, or every mirror failed (each failure is listed).
    """
    if not sha256:
        raise DownloadError(
            f"no SHA-256 is pinned for {name}, so it is not downloaded; "
            f"fetch it yourself and pass its folder as data_dir"
        )
    if not mirrors:
        raise DownloadError(f"no mirrors given for {name}: expected at least one base URL")
    target_dir = Path(target_dir)
    _ensure_writable(target_dir)
    part = target_dir / f"{name}.part"
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + name + ".gz"
        try:
            return _fetch_verified(url, part, name, sha256, progress, timeout)
        except _MirrorFailure as err:
            failures.append(f"{url}: {err}")
        finally:
            part.unlink(missing_ok=True)
    raise DownloadError(
        f"could not download {name} from any of {len(mirrors)} mirror(s): " + "; ".join(failures)
    )


def _fetch_verified(url, part, name, sha256, progress, timeout):
    """Fetch ``url`` into ``part``, check its payload's SHA-256 and move it to its final name."""
    _fetch(url, part, progress, timeout)
    try:
        got = payload_sha256(part)
    except DataError as err:  # a corrupt gzip is a bad transfer: next mirror
        raise _MirrorFailure(str(err)) from None
    if got != sha256.lower():
        raise ChecksumError(
            f"{url}: SHA-256 of the decompressed {name} does not match: "
            f"expected {sha256.lower()}, got {got}; the download was deleted"
        )
    final = part.parent / (f"{name}.gz" if is_gzip(part) else name)
    os.replace(part, final)
    return final


def download_dataset(dataset, target_dir, *, names=FILES, mirrors=None, sha256=None,
                     progress=None, timeout=10.0):
    """Download ``names`` of ``dataset`` ('mnist' or 'fashion-mnist') into ``target_dir``.

    ``mirrors`` and ``sha256`` (a ``{name: hex}`` table) default to :data:`MIRRORS` and
    :data:`SHA256` for ``dataset``; tests point them at a local server. Every name must have
    a pinned hash before anything is fetched, else :class:`DownloadError` says what to do.
    Returns the list of paths written, in the order of ``names``.
    """
    mirrors = MIRRORS.get(dataset, ()) if mirrors is None else tuple(mirrors)
    table = SHA256.get(dataset, {}) if sha256 is None else dict(sha256)
    unpinned = [n for n in names if not table.get(n)]
    if unpinned:
        where = " or ".join(MIRRORS.get(dataset, ())) or "the dataset's publisher"
        raise DownloadError(
            f"{dataset}: SHA-256 checksums of the decompressed files are not pinned in "
            f"scratchvae for {', '.join(unpinned)}, so they are not downloaded automatically; "
            f"download the .gz files from {where} and pass their folder as data_dir"
        )
    return [download_file(n, target_dir, mirrors=mirrors, sha256=table[n],
                          progress=progress, timeout=timeout) for n in names]


def _fetch(url, part, progress, timeout):
    """Stream ``url`` into ``part``; raise _MirrorFailure on any transfer problem."""
    try:
        out = open(part, "wb")
    except OSError as err:
        raise DataError(f"cannot write to directory {part.parent}: {err.strerror or err}") from None
    req = urllib.request.Request(url, headers={"User-Agent": "scratchvae"})
    try:
        with out, urllib.request.urlopen(req, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if total is not None and total > _MAX_BYTES:
                raise _MirrorFailure(f"Content-Length {total} exceeds {_MAX_BYTES} bytes")
            done = 0
            if progress is not None:
                progress(0, total)
            while chunk := resp.read(_CHUNK):
                done += len(chunk)
                if done > _MAX_BYTES:
                    raise _MirrorFailure(f"more than {_MAX_BYTES} bytes sent")
                out.write(chunk)
                if progress is not None:
                    progress(done, total)
            if total is not None and done != total:
                raise _MirrorFailure(f"connection dropped after {done} of {total} bytes")
    except urllib.error.HTTPError as err:
        raise _MirrorFailure(f"HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        raise _MirrorFailure(f"cannot connect: {err.reason}") from None
    except (http.client.HTTPException, OSError, ValueError) as err:
        raise _MirrorFailure(f"{type(err).__name__}: {err}") from None


def _ensure_writable(d):
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create directory {d}: {err.strerror or err}") from None
    if not os.access(d, os.W_OK):
        raise DataError(f"directory {d} is not writable: expected write permission")
