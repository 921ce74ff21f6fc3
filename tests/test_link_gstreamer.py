"""A real third-party WHIP publisher and WHEP player (GStreamer ``webrtcbin``) against ``greencam serve``.

webrtcbin uses GStreamer's default DTLS certificate, which is RSA: aiortc in the DTLS client
role offers only ECDSA suites and failed every handshake with ``no shared cipher`` until the
server took the server role (``a=setup:passive``). The peers run as helper processes with
the system Python (``/usr/bin/python3``), which has Debian's GStreamer bindings; they talk
only to 127.0.0.1. Skipped with the reason when GStreamer or its bindings are missing
(``.ci/run`` installs them).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.test_link_whip import TOKEN, Serve, wait_for

HELPER = Path(__file__).with_name("gst_webrtc_peer.py")
SYSTEM_PYTHON = "/usr/bin/python3"
PROBE = """
import gi
gi.require_version("Gst", "1.0"); gi.require_version("GstWebRTC", "1.0"); gi.require_version("GstSdp", "1.0")
gi.require_version("Nice", "0.1")
from gi.repository import Gst, GstWebRTC, GstSdp, Nice
Gst.init(None)
missing = [e for e in ("webrtcbin", "nicesrc", "dtlsenc", "vp8enc", "vp8dec", "rtpvp8pay", "rtpvp8depay",
                       "videotestsrc", "sctpenc") if Gst.ElementFactory.find(e) is None]
print("missing:" + ",".join(missing) if missing else "ok")
"""
APT = "gstreamer1.0-plugins-bad gstreamer1.0-plugins-good gstreamer1.0-nice gir1.2-gst-plugins-bad-1.0 gir1.2-nice-0.1 python3-gst-1.0"


def _gstreamer_missing() -> str | None:
    if not Path(SYSTEM_PYTHON).exists() or shutil.which("gst-inspect-1.0") is None:
        return f"GStreamer is not installed (apt-get install {APT})"
    try:
        out = subprocess.run([SYSTEM_PYTHON, "-c", PROBE], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cannot run {SYSTEM_PYTHON}: {e}"
    last = (out.stdout.strip().splitlines() or [""])[-1]
    if last == "ok":
        return None
    why = last if last.startswith("missing:") else (out.stderr.strip().splitlines() or ["no output"])[-1]
    return f"GStreamer webrtcbin or its Python bindings are not usable ({why}; apt-get install {APT})"


MISSING = _gstreamer_missing()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]


class Peer:
    """One helper process; its JSON lines are collected on a thread."""

    def __init__(self, mode: str, url: str, *flags: str, seconds: float, timeout: float = 60.0) -> None:
        args = [SYSTEM_PYTHON, str(HELPER), mode, url, TOKEN, *flags, "--seconds", str(seconds)]
        if seconds == 0:
            args.append("--stdin")  # runs until summary() closes its input
        self.proc = subprocess.Popen(
            [*args, "--timeout", str(timeout)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._read_errors, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.lines.append(json.loads(line))

    def _read_errors(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.errors.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.errors)

    def event(self, name: str, **match: Any) -> dict[str, Any] | None:
        return next(
            (x for x in self.lines if x.get("event") == name and all(x.get(k) == v for k, v in match.items())), None
        )

    def summary(self, timeout: float = 90.0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # a peer with --seconds 0 stops now; the others end on their own
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for reader in self._readers:
            reader.join(10)
        found = next((x["summary"] for x in self.lines if "summary" in x), None)
        assert found is not None, f"no summary from the helper: {self.lines} {self.stderr[-2000:]}"
        return found


def test_webrtcbin_publishes_and_plays_with_an_rsa_certificate(
    tiny_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from greenscreen_cam.link import interop
    from greenscreen_cam.link import web as pages

    # A player without a data channel must outlive the data-channel idle time on its RTCP alone.
    monkeypatch.setattr(pages, "VIEWER_IDLE_S", 2.0)
    pcs: list[Any] = []
    real_prefer = interop.prefer_dtls_server

    def recording_prefer(pc: Any, setup: str) -> bool:
        pcs.append(pc)
        return real_prefer(pc, setup)

    monkeypatch.setattr(interop, "prefer_dtls_server", recording_prefer)
    serve = Serve(tiny_model, idle_timeout=4.0)
    try:
        # 1. Non-trickle publisher with the greencam data channel: it sends a prompt and gets masks.
        pub = Peer("publish", serve.url + "/whip", "--channel", seconds=0)  # until the players are done
        wait_for(
            lambda: pub.event("connection", state="connected") is not None or pub.proc.poll() is not None,
            60,
            "the publisher to connect",
        )
        answer = pub.event("answer")
        assert answer is not None, (pub.lines, pub.stderr)
        sid = answer["location"].rsplit("/", 1)[1]
        whep = f"{serve.url}/whep/{sid}"
        wait_for(lambda: serve.health()["sessions"] == 1, 10, "the publisher's session")
        time.sleep(1.0)  # the first frame reached the server: the viewer's relay has video
        # 2. At once: a non-trickle player with no data channel (stays 7 s), a trickle player with a
        #    channel, and a trickle publisher with no channel and no BUNDLE.
        quiet_view = Peer("view", whep, seconds=7)
        chan_view = Peer("view", whep, "--trickle", "--channel", seconds=3)
        bare_pub = Peer("publish", serve.url + "/whip", "--trickle", "--no-bundle", seconds=3)
        results = {"quiet_view": quiet_view.summary(), "chan_view": chan_view.summary()}
        results["bare_pub"] = bare_pub.summary()
        results["pub"] = pub.summary()
        peers = [pub, quiet_view, chan_view, bare_pub]
        wait_for(lambda: serve.health()["sessions"] == 0, 15, "every session to end")
    finally:
        serve.close()
    detail = "\n".join([json.dumps(x) for p in peers for x in p.lines if "event" in x] + serve.events)
    for name, r in results.items():
        assert r["error"] is None, f"{name}: {r['error']}\n{detail}"
        assert r["post_status"] == 201 and r["connected"], f"{name} did not connect\n{detail}"
        assert r["answer_setup"] == ["passive"], detail
        assert r["connection_at_end"] == "connected", f"{name} was dropped\n{detail}"
        assert r["delete_status"] == 200, f"{name}: DELETE answered {r['delete_status']}\n{detail}"
    # The publisher's prompt was acknowledged and its masks came back on its channel.
    assert results["pub"]["channel_open"] and "ack" in results["pub"]["texts"], detail
    assert results["pub"]["masks"] >= 1, detail
    # Players decoded the relayed video; the one without a channel kept it through the idle time.
    assert results["quiet_view"]["frames"] >= 10 and not results["quiet_view"]["channel_open"], detail
    assert results["chan_view"]["frames"] >= 1 and results["chan_view"]["channel_open"], detail
    # Trickle candidates may go unheard (PATCH 405), and no BUNDLE was offered, so none was answered.
    assert set(results["bare_pub"]["patch_status"]) <= {405}, detail
    assert results["bare_pub"]["offer_bundles"] is False and results["bare_pub"]["answer_bundles"] is False
    assert results["pub"]["answer_bundles"] is True
    assert not [e for e in serve.events if "silent for" in e], serve.events
    # webrtcbin's certificate really is RSA (what aiortc's DTLS client could not serve).
    from OpenSSL import crypto

    keys = set()
    for pc in pcs:
        for t in pc.getTransceivers():
            ssl = getattr(t.receiver.transport, "_ssl", None)
            cert = ssl.get_peer_certificate() if ssl is not None else None
            if cert is not None:
                keys.add(cert.get_pubkey().type())
    assert keys == {crypto.TYPE_RSA}, keys
