"""Download MNIST-like IDX files from public mirrors, verified.

One try per mirror, in order. Each file is streamed into ``<name>.part`` in the target
directory and renamed to its final name (``<name>.gz``, or ``<name>`` if a mirror served it
uncompressed) only once verified:

* MNIST: the SHA-256 of the **decompressed** IDX bytes must match the pinned value (the same
  bytes whichever mirror served the gzip);
* Fashion-MNIST: its authors publish the MD5 and size of each ``.gz`` (the values torchvision
  uses too); both are checked on the downloaded bytes before anything is decompressed.

A mismatch deletes the ``.part`` and raises :class:`ChecksumError`; a server error, timeout
or dropped connection moves on to the next mirror, and when all fail :class:`DownloadError`
lists each mirror's failure. The SHA-256 of every file's decompressed bytes is recorded in
the cache folder's ``SHA256SUMS`` (as ``sha256sum`` writes it), and reads from the cache
check it (:func:`verify_cached`), so a file changed on disk after its download is refused.

Nothing is printed: pass ``progress(done_bytes, total_bytes_or_None)`` to be told how the
current file is going (it restarts at 0 for each file).
"""

import gzip
import hashlib
import http.client
import os
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from scratchvae.data.idx import FILES, MAX_PAYLOAD_BYTES, is_gzip
from scratchvae.errors import ChecksumError, DataError, DownloadError


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

#: SHA-256 of each file's decompressed IDX bytes (MNIST).
SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
}

#: MD5 and byte size of each ``.gz`` as its authors publish them (Fashion-MNIST).
GZ_CHECKS = {
    "fashion-mnist": {
        "train-images-idx3-ubyte": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", 26_421_880),
        "train-labels-idx1-ubyte": ("25c81989df183df01b3e8a0aad5dffbe", 29_515),
        "t10k-images-idx3-ubyte": ("bef4ecab320f06d8554ea6380940ec79", 4_422_102),
        "t10k-labels-idx1-ubyte": ("bb300cfdad3c16e7a12a480ee83cd310", 5_148),
    },
}
MANIFEST = "SHA256SUMS"

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


def download_file(name, target_dir, *, mirrors, sha256=None, gz=None, progress=None, timeout=10.0):
    """Fetch ``<mirror><name>.gz`` from the first mirror that delivers it, verified.

    Parameters
    ----------
    name : str
        File name without ``.gz``, e.g. ``"train-images-idx3-ubyte"``.
    target_dir : str or os.PathLike
        Directory to write into (created if missing).
    mirrors : sequence of str
        Base URLs, tried in order, one try each.
    sha256 : str, optional
        Expected SHA-256 (hex) of the decompressed IDX bytes.
    gz : (md5 hex, size in bytes), optional
        The published MD5 and size of the ``.gz`` itself, checked before decompressing.
        At least one of ``sha256`` and ``gz`` is required.
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
        A file arrived whole but its size, MD5 or decompressed SHA-256 differs from the pinned one.
    DownloadError
        No checksum is given, or every mirror failed (each failure is listed).
    """
    if not sha256 and not gz:
        raise DownloadError(
            f"no checksum is pinned for {name}, so it is not downloaded; "
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
            return _fetch_verified(url, part, name, sha256, gz, progress, timeout)
        except _MirrorFailure as err:
            failures.append(f"{url}: {err}")
        finally:
            part.unlink(missing_ok=True)
    raise DownloadError(
        f"could not download {name} from any of {len(mirrors)} mirror(s): " + "; ".join(failures)
    )


def _fetch_verified(url, part, name, sha256, gz, progress, timeout):
    """Fetch ``url`` into ``part``, check it, move it to its final name and record its SHA-256."""
    _fetch(url, part, progress, timeout)
    if gz is not None:
        _check_gz(url, part, name, *gz)
    try:
        got = payload_sha256(part)
    except DataError as err:  # a corrupt gzip is a bad transfer: next mirror
        raise _MirrorFailure(str(err)) from None
    if sha256 and got != sha256.lower():
        raise ChecksumError(
            f"{url}: SHA-256 of the decompressed {name} does not match: "
            f"expected {sha256.lower()}, got {got}; the download was deleted"
        )
    final = part.parent / (f"{name}.gz" if is_gzip(part) else name)
    os.replace(part, final)
    record_sha256(part.parent, name, got)
    return final


def _check_gz(url, part, name, md5, size):
    """The downloaded ``.gz`` must have the published size and MD5 (before it is decompressed)."""
    got_size = part.stat().st_size
    if got_size != size:
        raise ChecksumError(f"{url}: {name}.gz has {got_size} bytes, expected the published "
                            f"{size}; the download was deleted")
    h = hashlib.md5(usedforsecurity=False)
    with open(part, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    if h.hexdigest() != md5.lower():
        raise ChecksumError(f"{url}: MD5 of {name}.gz does not match: expected the published "
                            f"{md5.lower()}, got {h.hexdigest()}; the download was deleted")


def record_sha256(directory, name, digest):
    """Write ``digest  name`` into ``directory/SHA256SUMS`` (replacing that name's line)."""
    path = Path(directory) / MANIFEST
    table = read_manifest(directory)
    table[name] = digest
    tmp = path.with_name(f".{MANIFEST}.tmp")
    tmp.write_text("".join(f"{d}  {n}\n" for n, d in sorted(table.items())))
    os.replace(tmp, path)


def read_manifest(directory):
    """``{name: sha256}`` from ``directory/SHA256SUMS`` ({} if there is none)."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return {}
    table = {}
    for line in path.read_text().splitlines():
        digest, _, name = line.strip().partition("  ")
        if len(digest) == 64 and name:
            table[name] = digest
    return table


def verify_cached(directory, found):
    """Raise ChecksumError for a file of ``found`` ({name: path}) whose decompressed bytes no
    longer have the SHA-256 recorded when it was downloaded."""
    table = read_manifest(directory)
    for name, path in found.items():
        if name in table and payload_sha256(path) != table[name]:
            raise ChecksumError(f"{path} changed since it was downloaded (its SHA-256 is not the one "
                                f"recorded in {Path(directory) / MANIFEST}); delete it to download it again")


def download_dataset(dataset, target_dir, *, names=FILES, mirrors=None, sha256=None, gz=None,
                     progress=None, timeout=10.0):
    """Download ``names`` of ``dataset`` ('mnist' or 'fashion-mnist') into ``target_dir``.

    ``mirrors``, ``sha256`` ({name: hex}) and ``gz`` ({name: (md5, size)}) default to
    :data:`MIRRORS`, :data:`SHA256` and :data:`GZ_CHECKS` for ``dataset``; tests point them at
    a local server. Every name must have a pinned checksum before anything is fetched, else
    :class:`DownloadError` says what to do. Returns the list of paths written, in order.
    """
    mirrors = MIRRORS.get(dataset, ()) if mirrors is None else tuple(mirrors)
    sha = SHA256.get(dataset, {}) if sha256 is None else dict(sha256)
    gzs = GZ_CHECKS.get(dataset, {}) if gz is None else dict(gz)
    unpinned = [n for n in names if not sha.get(n) and not gzs.get(n)]
    if unpinned:
        where = " or ".join(MIRRORS.get(dataset, ())) or "the dataset's publisher"
        raise DownloadError(
            f"{dataset}: no checksums are pinned in scratchvae for {', '.join(unpinned)}, so they "
            f"are not downloaded automatically; download the .gz files from {where} and pass "
            f"their folder as data_dir"
        )
    return [download_file(n, target_dir, mirrors=mirrors, sha256=sha.get(n), gz=gzs.get(n),
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
