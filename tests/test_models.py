"""Model registry, verified downloads over real HTTP on 127.0.0.1, and the checkpoint loader's errors."""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from greenscreen_cam.cli import app
from greenscreen_cam.errors import CheckpointError, ConfigError, DownloadError
from greenscreen_cam.track import models

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/good.pt":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        elif self.path in ("/chunked.pt", "/chunked-cut.pt"):
            # HTTP/1.1 chunked transfer (no Content-Length); the cut one stops inside its second chunk
            self.protocol_version = "HTTP/1.1"
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
            half = len(PAYLOAD) // 2
            for i, part in enumerate((PAYLOAD[:half], PAYLOAD[half:])):
                self.wfile.write(f"{len(part):x}\r\n".encode())
                if self.path == "/chunked-cut.pt" and i == 1:
                    self.wfile.write(part[:1000])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/stall.pt":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[:1000])
            self.wfile.flush()
            time.sleep(3)
        elif self.path == "/truncated.pt":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 3])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        else:
            self.send_error(404, "Not Found")


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _spec(**kw) -> models.ModelSpec:
    base = replace(
        models.get_spec("tiny"), filename="test.pt", sha256=hashlib.sha256(PAYLOAD).hexdigest(), size=len(PAYLOAD)
    )
    return replace(base, **kw)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_registry_names_and_configs_exist():
    import sam2

    assert list(models.MODELS)[:4] == ["tiny", "small", "base-plus", "large"]
    assert {"sam2.0-tiny", "sam2.0-small", "sam2.0-base-plus", "sam2.0-large"} <= set(models.MODELS)
    assert models.DEFAULT_MODEL == "tiny"
    root = Path(sam2.__file__).parent
    for spec in models.MODELS.values():
        assert (root / spec.config).is_file(), spec.config
        assert spec.url.startswith("https://dl.fbaipublicfiles.com/segment_anything_2/") and spec.url.endswith(
            spec.filename
        )
    assert models.get_spec("sam2.0-large").sha256.startswith("7442e4e9")
    with pytest.raises(CheckpointError, match="unknown model 'huge'"):
        models.get_spec("huge")


def test_download_good_file_verifies_and_renames(server, tmp_path):
    seen = []
    result = models.download(_spec(), tmp_path, url=f"{server}/good.pt", progress=lambda d, t: seen.append((d, t)))
    assert result.path == tmp_path / "test.pt" and result.path.read_bytes() == PAYLOAD
    assert result.verified == "sha256" and result.downloaded and result.size == len(PAYLOAD)
    assert result.describe() == "downloaded, SHA-256 verified"
    assert seen[0] == (0, len(PAYLOAD)) and seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert [p.name for p in tmp_path.iterdir()] == ["test.pt"]


@pytest.mark.parametrize(
    "path, spec_kw, message",
    [
        ("/good.pt", {"sha256": "0" * 64}, "failed verification"),
        ("/good.pt", {"size": len(PAYLOAD) + 1, "sha256": None}, "truncated"),
        ("/truncated.pt", {}, "failed after|truncated"),
        ("/chunked-cut.pt", {}, "was cut after 52[0-9]{4} bytes"),
        ("/chunked-cut.pt", {"sha256": None, "size": None}, "was cut after"),
        ("/missing.pt", {}, "HTTP 404"),
    ],
    ids=["wrong-hash", "wrong-size", "truncated-transfer", "chunked-cut", "chunked-cut-unverified", "404"],
)
def test_download_failures_leave_nothing_behind(server, tmp_path, path, spec_kw, message):
    with pytest.raises(DownloadError, match=message) as info:
        models.download(_spec(**spec_kw), tmp_path, url=f"{server}{path}", timeout=5)
    assert list(tmp_path.iterdir()) == [] and "\n" not in str(info.value)


def _files_open_under(folder: Path) -> list[str]:
    """Files this process holds open inside ``folder`` (deleted ones too), from /proc/self/fd."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder)):
            found.append(target)
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to list open files")
def test_download_connection_refused_leaks_no_file_handle(tmp_path):
    for _ in range(3):
        with pytest.raises(DownloadError, match="cannot reach"):
            models.download(_spec(), tmp_path, url=f"http://127.0.0.1:{_free_port()}/x.pt", timeout=5)
    assert list(tmp_path.iterdir()) == []
    assert _files_open_under(tmp_path) == [], "the temporary file's handle is closed on a failed connection"


def test_download_stalled_server_times_out(server, tmp_path):
    with pytest.raises(DownloadError, match=r"timed out after \d+ bytes \(no data for 0.5 s\)"):
        models.download(_spec(), tmp_path, url=f"{server}/stall.pt", timeout=0.5)
    assert list(tmp_path.iterdir()) == []


def test_chunked_download_says_what_was_verified(server, tmp_path):
    hashed = models.download(_spec(size=None), tmp_path / "a", url=f"{server}/chunked.pt")
    assert hashed.path.read_bytes() == PAYLOAD and hashed.verified == "sha256"
    # no published SHA-256, no registry size and no Content-Length: nothing could be checked
    bare = models.download(_spec(sha256=None, size=None), tmp_path / "b", url=f"{server}/chunked.pt")
    assert bare.path.read_bytes() == PAYLOAD and bare.verified == "none"
    assert "not verified" in bare.describe()
    sized = models.download(_spec(sha256=None, size=None), tmp_path / "c", url=f"{server}/good.pt")
    assert sized.verified == "size" and "size checked" in sized.describe()


def test_existing_file_is_only_called_verified_when_it_was(tmp_path):
    existing = tmp_path / "test.pt"
    existing.write_bytes(PAYLOAD)
    # nothing published: kept, but not called verified (no server is contacted)
    kept = models.download(_spec(sha256=None, size=None), tmp_path, url="http://127.0.0.1:9/never")
    assert (kept.downloaded, kept.verified) == (False, "none") and "verified" not in kept.describe().replace(
        "not verified", ""
    )
    kept = models.download(_spec(sha256=None), tmp_path, url="http://127.0.0.1:9/never")
    assert (kept.downloaded, kept.verified) == (False, "size")
    kept = models.download(_spec(), tmp_path, url="http://127.0.0.1:9/never")
    assert (kept.downloaded, kept.verified) == (
        False,
        "sha256",
    ) and kept.describe() == "already present, SHA-256 verified"


def test_existing_file_that_fails_its_check_is_downloaded_again(server, tmp_path):
    (tmp_path / "test.pt").write_bytes(b"a different file")
    result = models.download(_spec(), tmp_path, url=f"{server}/good.pt")
    assert result.downloaded and result.path.read_bytes() == PAYLOAD
    (tmp_path / "test.pt").write_bytes(b"wrong size")
    result = models.download(_spec(sha256=None), tmp_path, url=f"{server}/good.pt")
    assert result.downloaded and result.verified == "size"


def test_cli_download(server, tmp_path):
    runner = CliRunner()
    # 'small' has no published SHA-256, so the served bytes pass on their size alone.
    ok = runner.invoke(app, ["download", "small", "--dir", str(tmp_path), "--url", f"{server}/good.pt"])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "sam2.1_hiera_small.pt").read_bytes() == PAYLOAD
    assert "size checked" in ok.output and "SHA-256 verified" not in ok.output
    again = runner.invoke(app, ["download", "small", "--dir", str(tmp_path), "--url", f"{server}/good.pt"])
    assert again.exit_code == 0 and "already present" in again.output
    # 'tiny' has a published SHA-256, which these bytes do not have.
    bad = runner.invoke(app, ["download", "tiny", "--dir", str(tmp_path), "--url", f"{server}/good.pt", "--force"])
    assert bad.exit_code == 3
    assert "failed verification" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "sam2.1_hiera_tiny.pt").exists()
    unknown = runner.invoke(app, ["download", "huge"])
    assert unknown.exit_code == 3 and "unknown model 'huge'" in unknown.output


def test_missing_checkpoint_says_how_to_download(tmp_path):
    with pytest.raises(CheckpointError, match="greencam download tiny"):
        models.resolve_checkpoint(models.get_spec("tiny"), None, tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        models.resolve_checkpoint(models.get_spec("tiny"), tmp_path / "nope.pt")


def test_loads_the_checkpoint_it_was_given(tiny_checkpoint):
    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)["model"]
    net = models.load_model(models.get_spec("tiny"), tiny_checkpoint, resolution=256)
    key = "sam_mask_decoder.iou_prediction_head.layers.0.weight"
    torch.testing.assert_close(net.state_dict()[key], state[key])
    assert net.image_size == 256 and not net.training


def test_corrupt_and_truncated_checkpoints(tiny_checkpoint, tmp_path):
    spec = models.get_spec("tiny")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all" * 100)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        models.load_model(spec, garbage)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(tiny_checkpoint.read_bytes()[: tiny_checkpoint.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        models.load_model(spec, truncated)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        models.load_model(spec, empty)
    nodict = tmp_path / "nodict.pt"
    torch.save({"optimizer": 1}, nodict)
    with pytest.raises(CheckpointError, match="holds no SAM 2 weights"):
        models.load_model(spec, nodict)


def test_checkpoint_for_another_model_is_named(tmp_path, tiny_checkpoint):
    small = models.save_random_checkpoint(models.get_spec("small"), tmp_path / "small.pt")
    with pytest.raises(CheckpointError, match="does not fit model 'tiny'.*looks like model 'small'"):
        models.load_model(models.get_spec("tiny"), small)
    # SAM 2.1 weights into the SAM 2.0 architecture: different keys.
    with pytest.raises(CheckpointError, match="does not fit model 'sam2.0-tiny'.*looks like model 'tiny'"):
        models.load_model(models.get_spec("sam2.0-tiny"), tiny_checkpoint)


def test_shape_mismatch_is_named(tiny_checkpoint, tmp_path):
    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)["model"]
    state["obj_ptr_proj.layers.0.weight"] = torch.zeros(3, 3)
    bad = tmp_path / "bad.pt"
    torch.save({"model": state}, bad)
    with pytest.raises(CheckpointError, match=r"obj_ptr_proj.layers.0.weight has shape \(3, 3\)"):
        models.load_model(models.get_spec("tiny"), bad)


@pytest.mark.parametrize(
    "name, message", [("cuda", "no CUDA GPU"), ("mps", "MPS is not available"), ("tpu", "unknown --device")]
)
def test_unavailable_devices(name, message):
    if torch.cuda.is_available() and name == "cuda":
        pytest.skip("this machine has CUDA")
    if name == "mps" and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        pytest.skip("this machine has Apple MPS")
    from greenscreen_cam.errors import DeviceError

    with pytest.raises(DeviceError, match=message):
        models.resolve_device(name)
    assert models.resolve_device("auto") in ("cuda", "mps", "cpu")


def test_unsupported_resolution():
    with pytest.raises(ConfigError, match="--resolution 300 is not supported; choose one of 256, 384"):
        models.build_model(models.get_spec("tiny"), 300)
