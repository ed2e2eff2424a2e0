"""Downloads against a local HTTP server on 127.0.0.1: success, checksum, mirror fallback."""

import hashlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from _idxutil import NAMES, gz, idx_bytes, write_mnist_like
from scratchvae.data import download as dl
from scratchvae.data import download_dataset, download_file, load_dataset, read_idx
from scratchvae.errors import ChecksumError, DataError, DownloadError

NAME = "train-labels-idx1-ubyte"
LABELS = np.arange(100, dtype=np.uint8) % 10
RAW = idx_bytes(LABELS)
SHA = hashlib.sha256(RAW).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.routes[path] = (behaviour, body)``; anything else is a 404."""

    def do_GET(self):
        self.server.hits.append(self.path)
        kind, body = self.server.routes.get(self.path, ("404", b""))
        if kind in ("404", "500"):
            self.send_error(int(kind))
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if kind == "drop":  # promise len(body) bytes, send half, hang up
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture(scope="module")
def _running_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


@pytest.fixture
def server(_running_server, monkeypatch):
    """The local server with no routes yet; proxies off so 127.0.0.1 is reached directly."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    _running_server.routes, _running_server.hits = {}, []
    return _running_server


def _serve(srv, mirror, kind, body=b"", name=NAME):
    srv.routes[f"/{mirror}/{name}.gz"] = (kind, body)
    return f"{srv.base}/{mirror}/"


def _no_part_files(folder):
    return not list(folder.glob("*.part"))


def test_good_gzip_download_is_verified_and_renamed(server, tmp_path):
    body = gz(RAW)
    mirror = _serve(server, "m1", "ok", body)
    calls = []
    path = download_file(NAME, tmp_path / "cache", mirrors=[mirror], sha256=SHA,
                         progress=lambda done, total: calls.append((done, total)))
    assert path == tmp_path / "cache" / f"{NAME}.gz"
    np.testing.assert_array_equal(read_idx(path), LABELS)
    assert _no_part_files(tmp_path / "cache")
    assert calls[0] == (0, len(body)) and calls[-1] == (len(body), len(body))


def test_uncompressed_body_is_kept_under_the_raw_name(server, tmp_path):
    mirror = _serve(server, "m1", "ok", RAW)
    path = download_file(NAME, tmp_path, mirrors=[mirror], sha256=SHA)
    assert path == tmp_path / NAME and path.read_bytes() == RAW


def test_checksum_mismatch_deletes_part_and_raises(server, tmp_path):
    wrong = idx_bytes(LABELS[::-1])
    mirror = _serve(server, "m1", "ok", gz(wrong))
    second = _serve(server, "m2", "ok", gz(RAW))
    with pytest.raises(ChecksumError) as info:
        download_file(NAME, tmp_path, mirrors=[mirror, second], sha256=SHA)
    msg = str(info.value)
    assert f"expected {SHA}" in msg and f"got {hashlib.sha256(wrong).hexdigest()}" in msg
    assert _no_part_files(tmp_path)
    assert not (tmp_path / f"{NAME}.gz").exists() and not (tmp_path / NAME).exists()
    assert server.hits == [f"/m1/{NAME}.gz"]  # a mismatch is not retried elsewhere


def test_server_error_then_good_mirror(server, tmp_path):
    bad = _serve(server, "m1", "500")
    good = _serve(server, "m2", "ok", gz(RAW))
    path = download_file(NAME, tmp_path, mirrors=[bad, good], sha256=SHA)
    np.testing.assert_array_equal(read_idx(path), LABELS)
    assert server.hits == [f"/m1/{NAME}.gz", f"/m2/{NAME}.gz"]
    assert _no_part_files(tmp_path)


def test_dropped_connection_fails_that_mirror(server, tmp_path):
    body = gz(RAW)
    dropped = _serve(server, "m1", "drop", body)
    with pytest.raises(DownloadError, match=rf"connection dropped after {len(body) // 2} of {len(body)} bytes"):
        download_file(NAME, tmp_path, mirrors=[dropped], sha256=SHA)
    assert _no_part_files(tmp_path)
    good = _serve(server, "m2", "ok", body)
    assert download_file(NAME, tmp_path, mirrors=[dropped, good], sha256=SHA).is_file()


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_all_mirrors_fail_lists_each_failure(server, tmp_path):
    mirrors = [
        _serve(server, "m500", "500"),
        f"{server.base}/m404/",
        _serve(server, "mdrop", "drop", gz(RAW)),
        _serve(server, "mcorrupt", "ok", gz(RAW)[:-12]),  # whole transfer, broken gzip
        f"http://127.0.0.1:{_closed_port()}/refused/",
    ]
    with pytest.raises(DownloadError) as info:
        download_file(NAME, tmp_path, mirrors=mirrors, sha256=SHA)
    msg = str(info.value)
    assert "from any of 5 mirror(s)" in msg
    for m, why in zip(mirrors, ["HTTP 500", "HTTP 404", "connection dropped",
                                "corrupt gzip stream", "cannot connect"]):
        start = msg.index(f"{m}{NAME}.gz: ")
        assert why in msg[start:].split("; http")[0]
    assert not list(tmp_path.iterdir())


def test_unwritable_target_dir_is_a_data_error_naming_it(server, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    target = blocker / "cache"
    mirror = _serve(server, "m1", "ok", gz(RAW))
    with pytest.raises(DataError, match=f"cannot create directory {target}"):
        download_file(NAME, target, mirrors=[mirror], sha256=SHA)
    assert server.hits == []


def test_missing_checksum_refuses_to_download(server, tmp_path):
    mirror = _serve(server, "m1", "ok", gz(RAW))
    with pytest.raises(DownloadError, match=f"no checksum is pinned for {NAME}"):
        download_file(NAME, tmp_path, mirrors=[mirror], sha256=None)
    assert server.hits == []


def test_unpinned_files_are_not_downloaded(server, tmp_path, monkeypatch):
    monkeypatch.setitem(dl.MIRRORS, "fashion-mnist", (f"{server.base}/f/",))
    monkeypatch.setitem(dl.GZ_CHECKS, "fashion-mnist", {})
    monkeypatch.delenv("SCRATCHVAE_OFFLINE", raising=False)
    with pytest.raises(DownloadError, match="no checksums are pinned in scratchvae for .*data_dir"):
        load_dataset("fashion-mnist", cache_dir=tmp_path)
    assert server.hits == []


def test_published_fashion_mnist_checksums_are_pinned():
    table = dl.GZ_CHECKS["fashion-mnist"]
    assert set(table) == set(NAMES)
    assert table["train-images-idx3-ubyte"] == ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", 26_421_880)
    assert table["t10k-labels-idx1-ubyte"] == ("bb300cfdad3c16e7a12a480ee83cd310", 5_148)
    assert all(len(md5) == 32 and size > 0 for md5, size in table.values())


def _fashion_like(server, tmp_path, monkeypatch):
    """Synthetic Fashion-MNIST-like files served as .gz, with their MD5 and size pinned."""
    src = tmp_path / "src"
    src.mkdir()
    raw, arrays = write_mnist_like(src, compress=(False,) * 4)
    bodies = {n: gz(d) for n, d in raw.items()}
    for name, body in bodies.items():
        _serve(server, "fashion", "ok", body, name=name)
    monkeypatch.setitem(dl.MIRRORS, "fashion-mnist", (f"{server.base}/fashion/",))
    monkeypatch.setitem(dl.GZ_CHECKS, "fashion-mnist",
                        {n: (hashlib.md5(b).hexdigest(), len(b)) for n, b in bodies.items()})
    monkeypatch.delenv("SCRATCHVAE_OFFLINE", raising=False)
    return raw, arrays


def test_fashion_mnist_downloads_checked_by_size_and_md5_and_records_sha256(server, tmp_path, monkeypatch):
    raw, (tr_x, tr_y, te_x, te_y) = _fashion_like(server, tmp_path, monkeypatch)
    cache = tmp_path / "cache"
    train, test = load_dataset("fashion-mnist", cache_dir=cache)
    np.testing.assert_array_equal(train.images, tr_x)
    np.testing.assert_array_equal(test.labels, te_y)
    assert dl.read_manifest(cache / "fashion-mnist") == {n: hashlib.sha256(d).hexdigest() for n, d in raw.items()}
    hits = len(server.hits)
    load_dataset("fashion-mnist", cache_dir=cache)          # from the cache, checked, no requests
    assert len(server.hits) == hits
    path = cache / "fashion-mnist" / f"{NAMES[1]}.gz"         # a cached file changed on disk
    path.write_bytes(gz(raw[NAMES[1]][:-1] + bytes([raw[NAMES[1]][-1] ^ 1])))
    with pytest.raises(ChecksumError, match=f"{path} changed since it was downloaded.*delete it"):
        load_dataset("fashion-mnist", cache_dir=cache)


@pytest.mark.parametrize("damage", ["size", "md5"])
def test_fashion_mnist_download_with_the_wrong_size_or_md5_is_refused(damage, server, tmp_path, monkeypatch):
    raw, _ = _fashion_like(server, tmp_path, monkeypatch)
    md5, size = dl.GZ_CHECKS["fashion-mnist"][NAME]
    wrong = (md5, size + 1) if damage == "size" else ("0" * 32, size)
    monkeypatch.setitem(dl.GZ_CHECKS["fashion-mnist"], NAME, wrong)
    expect = f"has {size} bytes, expected the published {size + 1}" if damage == "size" else \
        f"MD5 of {NAME}.gz does not match: expected the published {'0' * 32}, got {md5}"
    with pytest.raises(ChecksumError, match=expect):
        load_dataset("fashion-mnist", cache_dir=tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache" / "fashion-mnist").iterdir() if p.name.startswith(NAME)]


def test_pinned_mnist_hashes_are_the_published_ones():
    assert dl.SHA256["mnist"]["train-images-idx3-ubyte"].startswith("ba891046e650")
    assert set(dl.SHA256["mnist"]) == set(NAMES)
    assert all(len(h) == 64 for h in dl.SHA256["mnist"].values())


def test_load_dataset_downloads_missing_files_into_the_cache(server, tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    raw, (tr_x, tr_y, te_x, te_y) = write_mnist_like(src, compress=(False,) * 4)
    for name, data in raw.items():
        _serve(server, "mirror", "ok", gz(data), name=name)
    monkeypatch.setitem(dl.MIRRORS, "mnist", (_serve(server, "down", "500"), f"{server.base}/mirror/"))
    monkeypatch.setitem(dl.SHA256, "mnist", {n: hashlib.sha256(d).hexdigest() for n, d in raw.items()})
    monkeypatch.delenv("SCRATCHVAE_OFFLINE", raising=False)
    cache = tmp_path / "cache"
    train, test = load_dataset("mnist", cache_dir=cache, progress=lambda d, t: None)
    np.testing.assert_array_equal(train.images, tr_x)
    np.testing.assert_array_equal(test.labels, te_y)
    assert sorted(p.name for p in (cache / "mnist").iterdir()) == sorted([f"{n}.gz" for n in NAMES] + ["SHA256SUMS"])
    hits = len(server.hits)
    load_dataset("mnist", cache_dir=cache)  # second time: from the cache, no requests
    assert len(server.hits) == hits


def test_download_dataset_uses_injected_tables(server, tmp_path):
    mirror = _serve(server, "m", "ok", gz(RAW))
    paths = download_dataset("mnist", tmp_path, names=[NAME], mirrors=[mirror], sha256={NAME: SHA})
    assert paths == [tmp_path / f"{NAME}.gz"]


def test_a_failed_download_leaves_no_cache_folder_and_names_data_dir(server, tmp_path, monkeypatch, capsys):
    """Every mirror fails: the cache folders the download made (empty) are gone, and the one
    line says how to read the files from a folder instead."""
    from scratchvae.cli import main

    monkeypatch.setitem(dl.MIRRORS, "mnist", (_serve(server, "down", "500"),))
    monkeypatch.delenv("SCRATCHVAE_OFFLINE", raising=False)
    monkeypatch.setenv("SCRATCHVAE_CACHE_DIR", str(tmp_path / "cache" / "root"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DownloadError, match="data_dir=FOLDER"):
        load_dataset("mnist")
    assert list(tmp_path.iterdir()) == []
    assert main(["train", "--dataset", "mnist", "--quiet"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("scratchvae: error: could not download train-images-idx3-ubyte") and \
        "--data-dir DIR" in line, line
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "cache").mkdir()                              # a folder that was there stays
    with pytest.raises(DownloadError):
        load_dataset("mnist")
    assert [p.name for p in tmp_path.iterdir()] == ["cache"] and list((tmp_path / "cache").iterdir()) == []
