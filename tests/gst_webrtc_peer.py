"""A standard WHIP publisher or WHEP player built on GStreamer's ``webrtcbin`` (a test helper process).

Run with a Python that has GStreamer's GObject bindings (Debian: ``/usr/bin/python3`` with
``python3-gi python3-gst-1.0 gir1.2-gst-plugins-bad-1.0 gir1.2-nice-0.1``), not with the
project's virtual environment: it imports nothing from greencam, so it behaves like any
third-party RFC 9725 client. webrtcbin keeps GStreamer's default DTLS certificate, which is
RSA (gst-plugins-bad's ``dtls`` element generates a 2048-bit RSA key), the case aiortc's
ECDSA-only DTLS client role could not serve.

ICE is restricted to 127.0.0.1 (libnice is given that one local address), and everything
is bounded by ``--seconds``. One JSON object per line goes to stdout: ``{"event": ...}``
as things happen and a final ``{"summary": {...}}``.

Usage::

    python3 gst_webrtc_peer.py publish URL/whip TOKEN [--trickle] [--channel] [--no-bundle] [--seconds S] [--timeout T]
    python3 gst_webrtc_peer.py view URL/whep/SESSION TOKEN [--trickle] [--channel] [--seconds S] [--timeout T]

``--seconds`` counts from the moment the connection is up; ``--stdin`` also stops when standard
input closes; ``--timeout`` bounds the whole run.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import threading
import time
import urllib.error
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("Nice", "0.1")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC, Nice  # noqa: E402

PUBLISH = (
    "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=15/1 "
    "! videoconvert ! vp8enc deadline=1 keyframe-max-dist=15 cpu-used=8 ! rtpvp8pay pt=96 "
    "! application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000 ! webrtcbin name=w"
)
T0 = time.monotonic()


def _g_object_ref(obj: object) -> None:
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    gobject = ctypes.CDLL("libgobject-2.0.so.0")
    gobject.g_object_ref.argtypes, gobject.g_object_ref.restype = [ctypes.c_void_p], ctypes.c_void_p
    gobject.g_object_ref(get(obj.__gpointer__, None))  # type: ignore[attr-defined]


_PRINT = threading.Lock()


def emit(**kw: object) -> None:
    with _PRINT:  # GLib's thread and the HTTP threads both report
        sys.stdout.write(json.dumps({"t": round(time.monotonic() - T0, 2), **kw}) + "\n")
        sys.stdout.flush()


class Peer:
    def __init__(
        self,
        mode: str,
        url: str,
        token: str,
        *,
        trickle: bool,
        channel: bool,
        seconds: float,
        timeout: float,
        no_bundle: bool = False,
    ) -> None:
        self.mode, self.url, self.token = mode, url, token
        self.trickle, self.want_channel, self.seconds, self.timeout = trickle, channel, seconds, timeout
        self.loop = GLib.MainLoop()
        if mode == "publish":
            self.pipe = Gst.parse_launch(PUBLISH)
            self.w = self.pipe.get_by_name("w")
        else:
            self.pipe = Gst.Pipeline.new("view")
            self.w = Gst.ElementFactory.make("webrtcbin", "w")
            self.pipe.add(self.w)
        policy = GstWebRTC.WebRTCBundlePolicy.NONE if no_bundle else GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE
        self.w.set_property("bundle-policy", policy)
        self.location: str | None = None
        self.posted = False
        self.status: dict[str, object] = {
            "mode": mode,
            "trickle": trickle,
            "channel": channel,
            "bundle": not no_bundle,
            "offer_bundles": None,
            "channel_open": False,
            "post_status": None,
            "connection": "new",
            "ice": "new",
            "connected": False,
            "frames": 0,
            "masks": 0,
            "texts": [],
            "patch_status": [],
            "delete_status": None,
            "error": None,
        }
        self.channel = None
        self._loopback_only()
        self.w.connect("on-negotiation-needed", self._on_negotiation_needed)
        self.w.connect("on-ice-candidate", self._on_ice_candidate)
        self.w.connect("notify::ice-gathering-state", self._on_gathering)
        self.w.connect("notify::connection-state", self._on_connection)
        self.w.connect("notify::ice-connection-state", self._on_ice)
        self.w.connect("pad-added", self._on_pad)
        self.w.connect("on-data-channel", lambda _w, ch: self._channel(ch))
        bus = self.pipe.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self._on_error)
        self.negotiating = False
        if mode == "publish":
            for t in self._transceivers():
                t.set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)

    # ------------------------------------------------------------------ setup
    def _loopback_only(self) -> None:
        ice = self.w.get_property("ice-agent")
        # GStreamer 1.22 hands the ICE object out without a reference of its own: once Python
        # drops its wrapper the object is freed under webrtcbin (GLib-GObject-CRITICAL, then
        # "gst_webrtc_ice_add_stream: assertion failed"). Keep one reference for webrtcbin.
        _g_object_ref(ice)
        agent = ice.get_property("agent")
        addr = Nice.Address.new()
        addr.set_from_string("127.0.0.1")
        agent.add_local_address(addr)  # once any address is given, libnice gathers only those

    def _transceivers(self) -> list:
        out = []
        i = 0
        while True:
            t = self.w.emit("get-transceiver", i)
            if t is None:
                return out
            out.append(t)
            i += 1

    # ------------------------------------------------------------------ signalling
    def _on_negotiation_needed(self, _w: object) -> None:
        if self.negotiating:  # one offer with everything: made once the main loop runs (all is added by then)
            return
        self.negotiating = True
        GLib.idle_add(self._create_offer)

    def _create_offer(self) -> bool:
        promise = Gst.Promise.new_with_change_func(self._on_offer, None)
        self.w.emit("create-offer", None, promise)
        return False

    def _on_offer(self, promise: Gst.Promise, _data: object) -> None:
        promise.wait()
        reply = promise.get_reply()
        offer = reply.get_value("offer") if reply is not None and reply.has_field("offer") else None
        if offer is None:
            self.status["error"] = f"webrtcbin made no offer: {reply.to_string() if reply else None}"
            GLib.idle_add(self.loop.quit)
            return
        self.w.emit("set-local-description", offer, Gst.Promise.new())
        if self.trickle:
            self._post(offer.sdp.as_text())

    def _on_gathering(self, _w: object, _spec: object) -> None:
        state = self.w.get_property("ice-gathering-state")
        if state == GstWebRTC.WebRTCICEGatheringState.COMPLETE and not self.trickle and not self.posted:
            self._post(self.w.get_property("local-description").sdp.as_text())

    def _on_ice_candidate(self, _w: object, mline: int, candidate: str) -> None:
        if not self.trickle:
            return

        def patch() -> None:
            while self.location is None and not self.status["post_status"]:
                time.sleep(0.02)
            if self.location is None:
                return
            body = f"a={candidate}\r\n".encode()
            status = self._http("PATCH", self.location, body, "application/trickle-ice-sdpfrag")[0]
            self.status["patch_status"].append(status)  # type: ignore[union-attr]

        threading.Thread(target=patch, daemon=True).start()

    def _post(self, sdp: str) -> None:
        self.posted = True
        self.status["offer_bundles"] = "a=group:BUNDLE" in sdp
        emit(event="offer", trickle=self.trickle, candidates=sdp.count("a=candidate"), bytes=len(sdp))

        def post() -> None:
            status, body, headers = self._http("POST", self.url, sdp.encode(), "application/sdp")
            self.status["post_status"] = status
            if status != 201:
                self.status["error"] = f"POST answered {status}: {body[:200]!r}"
                GLib.idle_add(self.loop.quit)
                return
            loc = headers.get("Location", "")
            base = self.url.split("/whip")[0].split("/whep")[0]
            self.location = base + loc if loc.startswith("/") else loc
            emit(event="answer", location=loc)
            GLib.idle_add(self._answer, body.decode())

        threading.Thread(target=post, daemon=True).start()

    def _answer(self, text: str) -> bool:
        self.status["answer_bundles"] = "a=group:BUNDLE" in text
        self.status["answer_setup"] = sorted({x[8:] for x in text.split("\r\n") if x.startswith("a=setup:")})
        ok, msg = GstSdp.SDPMessage.new_from_text(text)
        if ok != GstSdp.SDPResult.OK:
            self.status["error"] = "the answer is not SDP"
            self.loop.quit()
            return False
        answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, msg)
        self.w.emit("set-remote-description", answer, Gst.Promise.new())
        return False

    def _http(self, method: str, url: str, body: bytes | None, ctype: str | None) -> tuple[int, bytes, dict]:
        headers = {"Authorization": f"Bearer {self.token}"}
        if ctype:
            headers["Content-Type"] = ctype
        req = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)
        except OSError as e:
            return 0, str(e).encode(), {}

    # ------------------------------------------------------------------ state and media
    def _on_connection(self, _w: object, _spec: object) -> None:
        state = self.w.get_property("connection-state").value_nick
        self.status["connection"] = state
        emit(event="connection", state=state)
        if state == "connected" and not self.status["connected"]:
            self.status["connected"] = True
            if self.seconds > 0:
                GLib.timeout_add(int(self.seconds * 1000), self.loop.quit)  # --seconds of media from here
        elif state == "failed":
            GLib.timeout_add(500, self.loop.quit)

    def _on_ice(self, _w: object, _spec: object) -> None:
        self.status["ice"] = self.w.get_property("ice-connection-state").value_nick

    def _on_pad(self, _w: object, pad: Gst.Pad) -> None:
        if pad.direction != Gst.PadDirection.SRC:
            return
        sink = Gst.parse_bin_from_description(
            "rtpvp8depay ! vp8dec ! fakesink name=count signal-handoffs=true sync=false", True
        )
        self.pipe.add(sink)
        sink.sync_state_with_parent()
        sink.get_by_name("count").connect("handoff", self._on_frame)
        pad.link(sink.get_static_pad("sink"))

    def _on_frame(self, *_args: object) -> None:
        self.status["frames"] = int(self.status["frames"]) + 1  # type: ignore[call-overload]
        if self.status["frames"] == 1:
            emit(event="first-frame")

    def _channel(self, ch: object) -> None:
        if self.channel is not None:
            return
        self.channel = ch
        ch.connect("on-open", self._on_channel_open)  # type: ignore[attr-defined]
        ch.connect("on-message-data", self._on_data)  # type: ignore[attr-defined]
        ch.connect("on-message-string", self._on_text)  # type: ignore[attr-defined]

    def _on_channel_open(self, ch: object) -> None:
        self.status["channel_open"] = True
        emit(event="channel-open")
        if self.mode == "publish":
            prompt = {"type": "prompt", "box": [100, 60, 120, 120], "width": 320, "height": 240, "id": 1}
            ch.emit("send-string", json.dumps(prompt))  # type: ignore[attr-defined]

    def _on_data(self, _ch: object, data: GLib.Bytes) -> None:
        if data is not None and bytes(data.get_data() or b"")[:4] == b"GCM1":
            self.status["masks"] = int(self.status["masks"]) + 1  # type: ignore[call-overload]

    def _on_text(self, _ch: object, text: str) -> None:
        texts = self.status["texts"]
        if isinstance(texts, list) and len(texts) < 20:
            texts.append(json.loads(text).get("type") if text.startswith("{") else "?")

    def _on_error(self, _bus: object, message: Gst.Message) -> None:
        err, _debug = message.parse_error()
        self.status["error"] = f"{message.src.get_name()}: {err.message}"
        emit(event="error", error=self.status["error"])

    # ------------------------------------------------------------------ run
    def _on_stdin(self, fd: int, _cond: object) -> bool:
        import os

        if not os.read(fd, 4096):  # end of input: the caller says stop
            self.loop.quit()
            return False
        return True

    def run(self, until_stdin_closes: bool = False) -> dict[str, object]:
        if until_stdin_closes:
            GLib.io_add_watch(
                sys.stdin.fileno(), GLib.PRIORITY_DEFAULT, GLib.IOCondition.IN | GLib.IOCondition.HUP, self._on_stdin
            )
        self.pipe.set_state(Gst.State.READY)
        if self.want_channel:
            opts = Gst.Structure.new_from_string("application/data-channel,ordered=false,max-retransmits=0")
            self._channel(self.w.emit("create-data-channel", "greencam", opts))
        if self.mode == "view":
            caps = Gst.Caps.from_string("application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000")
            self.w.emit("add-transceiver", GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY, caps)
        self.pipe.set_state(Gst.State.PLAYING)
        GLib.timeout_add(int(self.timeout * 1000), self.loop.quit)  # never connected: give up
        self.loop.run()
        self.status["connection_at_end"] = self.w.get_property("connection-state").value_nick
        if self.location:
            self.status["delete_status"] = self._http("DELETE", self.location, None, None)[0]
        self.pipe.set_state(Gst.State.NULL)
        return self.status


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["publish", "view"])
    parser.add_argument("url")
    parser.add_argument("token")
    parser.add_argument("--trickle", action="store_true")
    parser.add_argument("--channel", action="store_true")
    parser.add_argument("--no-bundle", action="store_true", help="bundle-policy none (no a=group:BUNDLE)")
    parser.add_argument("--seconds", type=float, default=6.0, help="how long to stay once connected (0: no limit)")
    parser.add_argument("--stdin", action="store_true", help="also stop when standard input closes")
    parser.add_argument("--timeout", type=float, default=40.0, help="give up when not done by then")
    args = parser.parse_args()
    Gst.init(None)
    peer = Peer(
        args.mode,
        args.url,
        args.token,
        trickle=args.trickle,
        channel=args.channel,
        seconds=args.seconds,
        timeout=args.timeout,
        no_bundle=args.no_bundle,
    )
    emit(summary=peer.run(until_stdin_closes=args.stdin))
    return 0


if __name__ == "__main__":
    sys.exit(main())
