"""IDX reader: round trips, every malformed-file case, resource caps, and a fuzz test."""

import gzip
import io
import tempfile
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _idxutil import gz, idx_bytes, idx_header, write_idx
from scratchvae.data import MAX_PAYLOAD_BYTES, read_idx
from scratchvae.errors import DataError

IMAGES = np.arange(3 * 28 * 28, dtype=np.uint64).astype(np.uint8).reshape(3, 28, 28)
LABELS = np.array([7, 2, 1, 0, 4], dtype=np.uint8)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("arr", [IMAGES, LABELS], ids=["images", "labels"])
def test_round_trip(tmp_path, arr, compress):
    path = write_idx(tmp_path / ("f.gz" if compress else "f"), arr, compress=compress)
    got = read_idx(path)
    assert got.dtype == np.uint8 and got.shape == arr.shape
    np.testing.assert_array_equal(got, arr)


def test_gzip_detected_by_content_not_name(tmp_path):
    path = tmp_path / "train-labels-idx1-ubyte"  # no .gz suffix, gzip content
    path.write_bytes(gz(idx_bytes(LABELS)))
    np.testing.assert_array_equal(read_idx(path), LABELS)


def test_empty_file_set_is_allowed(tmp_path):
    path = write_idx(tmp_path / "f", np.zeros((0, 28, 28), np.uint8))
    assert read_idx(path).shape == (0, 28, 28)


GOOD = idx_bytes(IMAGES)
BAD_FILES = {
    "too short": (b"\x00\x00", "", "too short for an IDX header"),
    "bad magic": (b"\x01\x02" + GOOD[2:], "", "bad IDX magic"),
    "float type": (idx_header((5,), type_code=0x0D) + bytes(20), "", "expected 0x08 (uint8), got 0x0d"),
    "two dims": (idx_header((5, 5)) + bytes(25), "", "expected 1 (labels) or 3 (images) IDX dimensions, got 2"),
    "header cut": (GOOD[:10], "", "truncated IDX header: expected 16 bytes"),
    "payload cut raw": (GOOD[:-1], "", "truncated: expected 2368 bytes"),
    "payload cut gz": (gz(GOOD[:-1]), ".gz", "truncated: expected 2368 decompressed content bytes"),
    "trailing raw": (GOOD + b"\x00", "", "trailing bytes after the payload"),
    "trailing gz": (gz(GOOD + b"\x00"), ".gz", "trailing bytes after the payload"),
    "not gzip": (GOOD, ".gz", "the name ends in .gz but the content is not gzip"),
    "gzip cut": (gz(GOOD)[:40], ".gz", "corrupt gzip stream"),
    "garbage after gzip": (gz(GOOD) + b"junk", ".gz", "corrupt gzip stream"),
    "labels cut": (idx_bytes(LABELS)[:-2], "", "expected 13 bytes (8-byte header + 5 uint8 items), the file has 11"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_is_a_data_error_naming_file_and_problem(tmp_path, case):
    data, suffix, message = BAD_FILES[case]
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(data)
    with pytest.raises(DataError) as info:
        read_idx(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="cannot open IDX file .*nope"):
        read_idx(tmp_path / "nope")


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("compress", [False, True])
def test_huge_declared_size_refused_before_allocating(tmp_path, compress):
    n = MAX_PAYLOAD_BYTES // 784 + 1  # just over the 2**31-byte cap
    path = tmp_path / "huge"
    data = idx_header((n, 28, 28)) + bytes(784)
    path.write_bytes(gz(data) if compress else data)

    def read():
        with pytest.raises(DataError, match=rf"declares {n} x 28 x 28 = {n * 784} bytes, more than"):
            read_idx(path)

    assert _peak_bytes(read) < 1 << 20


def test_max_bytes_argument_caps_the_declared_size(tmp_path):
    path = write_idx(tmp_path / "f", IMAGES)
    with pytest.raises(DataError, match=r"more than the limit of 100 bytes \(max_bytes\)"):
        read_idx(path, max_bytes=100)
    assert read_idx(path, max_bytes=IMAGES.size).shape == IMAGES.shape


def test_raw_file_shorter_than_declared_is_refused_before_allocating(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(idx_header((1_000_000, 28, 28)) + bytes(784))  # declares 784 MB

    def read():
        with pytest.raises(DataError, match="truncated: expected 784000016 bytes"):
            read_idx(path)

    assert _peak_bytes(read) < 1 << 20


def test_gzip_bomb_stops_at_declared_size(tmp_path):
    # 10 declared images, then ~50 MB of zeros: compresses to ~50 KB.
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [comp.compress(idx_bytes(np.zeros((10, 28, 28), np.uint8)))]
    zeros = bytes(1 << 20)
    parts += [comp.compress(zeros) for _ in range(50)]
    parts.append(comp.flush())
    path = tmp_path / "bomb.gz"
    path.write_bytes(b"".join(parts))
    assert path.stat().st_size < 200_000

    def read():
        with pytest.raises(DataError, match="trailing bytes after the payload"):
            read_idx(path)

    # Decompressing it all would hold >= 50 MB at once; capped reading stays small.
    assert _peak_bytes(read) < 5 << 20


# ---- fuzz: anything either loads (and then re-encodes to the same bytes) or is a DataError ----

SMALL_IMAGES = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
SMALL_LABELS = idx_bytes(np.array([3, 1, 4, 1, 5], np.uint8))

_mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 400), st.integers(1, 255)),
    st.tuples(st.just("set"), st.integers(0, 400), st.integers(0, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 400)),
    st.tuples(st.just("extend"), st.binary(min_size=1, max_size=32)),
)


def _mutate(data, mutations):
    b = bytearray(data)
    for m in mutations:
        if m[0] in ("flip", "set") and b:
            i = m[1] % len(b)
            b[i] = b[i] ^ m[2] if m[0] == "flip" else m[2]
        elif m[0] == "truncate":
            del b[m[1] % (len(b) + 1):]
        elif m[0] == "extend":
            b += m[1]
    return bytes(b)


def _content(data):
    """What the reader should have parsed: the decompressed bytes if gzip."""
    if data[:2] == b"\x1f\x8b":
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as g:
            return g.read()
    return data


@pytest.fixture(scope="module")
def fuzz_dir():
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def _check(fuzz_dir, data, name):
    path = fuzz_dir / name
    path.write_bytes(data)
    try:
        arr = read_idx(path)
    except DataError:
        return
    assert arr.dtype == np.uint8 and arr.ndim in (1, 3)
    assert idx_bytes(arr) == _content(data)


FUZZ = settings(max_examples=200, derandomize=True, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(base=st.sampled_from([SMALL_IMAGES, SMALL_LABELS]),
       mutations=st.lists(_mutation, max_size=4),
       where=st.sampled_from(["raw", "mutate then gzip", "gzip then mutate"]),
       gz_name=st.booleans())
def test_fuzz_mutated_idx_loads_or_raises_data_error(fuzz_dir, base, mutations, where, gz_name):
    if where == "raw":
        data = _mutate(base, mutations)
    elif where == "mutate then gzip":
        data = gz(_mutate(base, mutations))
    else:
        data = _mutate(gz(base), mutations)
    _check(fuzz_dir, data, "f.gz" if gz_name else "f")


@FUZZ
@given(data=st.binary(max_size=300), gz_name=st.booleans())
def test_fuzz_random_bytes_load_or_raise_data_error(fuzz_dir, data, gz_name):
    _check(fuzz_dir, data, "r.gz" if gz_name else "r")
