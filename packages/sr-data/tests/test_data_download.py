"""sr-data download against a loopback HTTP server (no internet): resume, checksums, extraction, errors."""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sr_data import build_train_dataset
from sr_data.cli import main
from sr_data.download import DownloadError, download_collection, download_file
from sr_data.io import encode_png


def _archive() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k in range(2):
            img = np.random.default_rng(k).integers(0, 256, (24, 24, 3), dtype=np.uint8)
            zf.writestr(f"DIV2K_train_HR/{k + 1:04d}.png", encode_png(img))
    return buf.getvalue()


class _Server:
    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                name = self.path.rsplit("/", 1)[-1]
                rng = self.headers.get("Range")
                outer.requests.append((name, rng))
                data = outer.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                self.wfile.write(data[start:])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[_Server]:
    with _Server({"DIV2K_train_HR.zip": _archive()}) as srv:
        yield srv


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_extract_and_use(tmp_path: Path, server: _Server) -> None:
    data = server.files["DIV2K_train_HR.zip"]
    paths = download_collection(
        "div2k", tmp_path, base_url=server.url, files=["DIV2K_train_HR.zip"],
        checksums={"DIV2K_train_HR.zip": _sha(data)}, progress=False, log=lambda m: None,
    )  # fmt: skip
    assert paths == [tmp_path / "DIV2K" / "DIV2K_train_HR.zip"]
    assert paths[0].read_bytes() == data
    ds = build_train_dataset("div2k", root=tmp_path, scale=2, patch_size=4)  # the documented layout
    assert len(ds) == 2 and ds[0]["name"] == "0001"
    # a verified archive is not fetched again
    n = len(server.requests)
    download_collection(
        "div2k", tmp_path, base_url=server.url, files=["DIV2K_train_HR.zip"],
        checksums={"DIV2K_train_HR.zip": _sha(data)}, progress=False, log=lambda m: None,
    )  # fmt: skip
    assert len(server.requests) == n


def test_resume_uses_range(tmp_path: Path, server: _Server) -> None:
    data = server.files["DIV2K_train_HR.zip"]
    dest = tmp_path / "a.zip"
    (tmp_path / "a.zip.part").write_bytes(data[:100])
    download_file(server.url + "DIV2K_train_HR.zip", dest, digest=_sha(data))
    assert dest.read_bytes() == data
    assert server.requests[-1] == ("DIV2K_train_HR.zip", "bytes=100-")
    assert not (tmp_path / "a.zip.part").exists()
    # a complete .part: the server answers 416 and the file is verified and kept
    dest.rename(tmp_path / "b.zip.part")
    download_file(server.url + "DIV2K_train_HR.zip", tmp_path / "b.zip", digest=_sha(data))
    assert (tmp_path / "b.zip").read_bytes() == data


def test_checksum_mismatch_deletes_file(tmp_path: Path, server: _Server) -> None:
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        download_file(server.url + "DIV2K_train_HR.zip", tmp_path / "x.zip", digest="0" * 64)
    assert not (tmp_path / "x.zip").exists() and not (tmp_path / "x.zip.part").exists()
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(server.url + "missing.zip", tmp_path / "y.zip")


def test_unreachable_network_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a loopback port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main(
        ["download", "div2k", "--root", str(tmp_path), "--base-url", f"http://127.0.0.1:{port}/",
         "--files", "DIV2K_valid_LR_bicubic_X4.zip", "--no-progress", "--timeout", "5"]
    )  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("sr-data: error:") and "cannot reach the server" in err[-1]
    # the built-in checksum (from the documented source) is what a mirror is checked against
    with _Server({"DIV2K_valid_LR_bicubic_X4.zip": b"not the real archive"}) as srv:
        code = main(
            ["download", "div2k", "--root", str(tmp_path), "--base-url", srv.url,
             "--files", "DIV2K_valid_LR_bicubic_X4.zip", "--no-progress"]
        )  # fmt: skip
    assert code == 1 and "sha256 mismatch" in capsys.readouterr().err
