"""The link's wire format, prompt scaling, URL handling, admission and RTP details (no network)."""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

import numpy as np
import pytest

from greenscreen_cam.config import ServeSettings
from greenscreen_cam.errors import ConfigError, PromptError
from greenscreen_cam.link import protocol as P
from greenscreen_cam.link.client import send_size
from greenscreen_cam.link.urls import base_url


def test_mask_message_layout_is_the_documented_one() -> None:
    prob = np.arange(12, dtype=np.uint8).reshape(3, 4)
    msg = P.encode_mask(0x01020304, 7, P.STATE_LOST, -1.5, prob)
    assert msg[:4] == b"GCM1"
    assert struct.unpack(">I", msg[4:8])[0] == 0x01020304
    assert struct.unpack(">I", msg[8:12])[0] == 7
    assert struct.unpack(">HH", msg[12:16]) == (4, 3)
    assert msg[16] == 1 and msg[17] == 1 and msg[18:20] == b"\0\0"
    assert struct.unpack(">f", msg[20:24])[0] == -1.5
    assert msg[24] == 0x78  # RFC 1950 zlib header (browsers: DecompressionStream("deflate"))
    assert zlib.decompress(msg[24:]) == prob.tobytes()
    back = P.decode_mask(msg)
    assert (back.tag, back.seq, back.state, back.object_score) == (0x01020304, 7, 1, -1.5)
    np.testing.assert_array_equal(back.probability, prob)


def test_several_subjects_go_as_one_plane_each() -> None:
    """Encoding 2: n planes after one another, n in bytes 18-19; one plane is plain encoding 1."""
    planes = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    msg = P.encode_mask(9, 2, P.STATE_TRACKING, 0.25, planes)
    assert struct.unpack(">HH", msg[12:16]) == (5, 4)
    assert msg[17] == P.ENCODING_U8_PLANES_ZLIB and struct.unpack(">H", msg[18:20])[0] == 3
    assert zlib.decompress(msg[24:]) == planes.tobytes()
    back = P.decode_mask(msg)
    assert back.probability.shape == (3, 4, 5)
    np.testing.assert_array_equal(back.probability, planes)
    one = P.encode_mask(9, 2, P.STATE_TRACKING, 0.25, planes[:1])
    assert one == P.encode_mask(9, 2, P.STATE_TRACKING, 0.25, planes[0]) and one[17] == 1 and one[18:20] == b"\0\0"
    assert P.MAX_MASK_PLANES == __import__("greenscreen_cam.track.multi", fromlist=["x"]).MAX_SUBJECTS
    for bad in (np.zeros((9, 2, 2), np.uint8), np.zeros((1, 2, 2, 2), np.uint8), np.zeros((0, 2, 2), np.uint8)):
        with pytest.raises(ValueError):
            P.encode_mask(0, 0, 0, 0.0, bad)


def test_tags_and_sequence_numbers_wrap_at_32_bits() -> None:
    msg = P.encode_mask(2**32 + 5, 2**33 + 1, P.STATE_TRACKING, 1.0, np.zeros((2, 2), np.uint8))
    back = P.decode_mask(msg)
    assert (back.tag, back.seq) == (5, 1)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"GCM1" + b"\0" * 10, "too short"),
        (b"XXXX" + b"\0" * 30, "magic"),
        (P.HEADER.pack(P.MAGIC, 0, 0, 2, 2, 0, 9, 0, 0.0) + zlib.compress(b"\0" * 4), "encoding"),
        (P.HEADER.pack(P.MAGIC, 0, 0, 2, 2, 5, 1, 0, 0.0) + zlib.compress(b"\0" * 4), "state"),
        (P.HEADER.pack(P.MAGIC, 0, 0, 2, 2, 0, 1, 0, 0.0) + b"not zlib", "corrupt"),
        (P.HEADER.pack(P.MAGIC, 0, 0, 3, 3, 0, 1, 0, 0.0) + zlib.compress(b"\0" * 4), "header says 3x3"),
        (P.HEADER.pack(P.MAGIC, 0, 0, 2, 2, 0, 1, 0, 0.0) + zlib.compress(b"\0" * 5), "longer than the 2x2"),
        (P.HEADER.pack(P.MAGIC, 0, 0, 2, 2, 0, 1, 0, 0.0) + zlib.compress(b"\0" * 4)[:-3], "cut short"),
        (P.HEADER.pack(P.MAGIC, 0, 0, 2, 2, 0, 2, 1, 0.0) + zlib.compress(b"\0" * 4), "a mask of 1 planes"),
        (P.HEADER.pack(P.MAGIC, 0, 0, 2, 2, 0, 2, 0, 0.0) + zlib.compress(b"\0" * 4), "a mask of 0 planes"),
        (P.HEADER.pack(P.MAGIC, 0, 0, 2, 2, 0, 2, 9, 0.0) + zlib.compress(b"\0" * 36), "a mask of 9 planes"),
        (P.HEADER.pack(P.MAGIC, 0, 0, 2, 2, 0, 2, 3, 0.0) + zlib.compress(b"\0" * 8), "header says 3 x 2x2"),
        (P.HEADER.pack(P.MAGIC, 0, 0, 2, 2, 0, 2, 2, 0.0) + zlib.compress(bytes(1 << 24)), "longer than the 2 x 2x2"),
    ],
)
def test_malformed_mask_messages_are_refused(data: bytes, fragment: str) -> None:
    with pytest.raises(P.LinkProtocolError, match=fragment):
        P.decode_mask(data)


def test_a_drop_names_one_subject_by_its_number() -> None:
    msg = P.parse_text(P.drop_message(2, 7))
    assert msg == {"type": "prompt", "drop": 2, "id": 7} and P.prompt_drop(msg) == 2
    assert P.prompt_drop({"type": "prompt", "box": [1, 2, 3, 4], "width": 9, "height": 9}) is None
    for n in (1, P.MAX_MASK_PLANES):
        assert P.prompt_drop({"type": "prompt", "drop": n}) == n


@pytest.mark.parametrize(
    ("msg", "fragment"),
    [
        ({"drop": 0}, "out of range"),
        ({"drop": 9}, "out of range"),
        ({"drop": -1}, "out of range"),
        ({"drop": 2**70}, "out of range"),
        ({"drop": True}, "not bool"),
        ({"drop": 1.0}, "not float"),
        ({"drop": "1"}, "not str"),
        ({"drop": None}, "not NoneType"),
        ({"drop": [1]}, "not list"),
        ({"drop": 1, "box": [1, 2, 3, 4]}, "no box, points or add"),
        ({"drop": 1, "points": [[1, 2]]}, "no box, points or add"),
        ({"drop": 1, "add": True}, "no box, points or add"),
        ({"drop": 1, "add": False}, "no box, points or add"),
    ],
)
def test_a_malformed_drop_is_refused(msg: dict[str, Any], fragment: str) -> None:
    with pytest.raises(P.LinkProtocolError, match=fragment):
        P.prompt_drop({"type": "prompt", **msg})


def test_probability_and_logits_round_trip_with_clamping() -> None:
    logits = np.array([[-100.0, -2.0, 0.0], [0.5, 3.0, 100.0]], np.float32)
    prob = P.probability_u8(logits)
    assert prob.dtype == np.uint8 and prob[0, 0] == 0 and prob[1, 2] == 255 and prob[0, 2] in (127, 128)
    back = P.logits_from_u8(prob)
    assert back.dtype == np.float32
    assert back.min() == pytest.approx(-P.LOGIT_LIMIT) and back.max() == pytest.approx(P.LOGIT_LIMIT)
    assert back[0, 1] < 0 < back[1, 0]
    assert np.abs(back[0, 1] - logits[0, 1]) < 0.05 and np.abs(back[1, 1] - logits[1, 1]) < 0.2


def test_non_finite_object_scores_are_sent_as_finite_numbers() -> None:
    for score, expect in ((float("-inf"), -1e4), (float("inf"), 1e4), (float("nan"), 0.0), (-1024.0, -1024.0)):
        assert P.decode_mask(P.encode_mask(0, 0, 1, score, np.zeros((1, 1), np.uint8))).object_score == expect


def test_prompt_message_is_scaled_into_the_receiving_frame() -> None:
    text = P.prompt_message(P.Prompt(box=(100, 50, 200, 100), points=((320, 240),), labels=(1,)), 640, 480, 3)
    msg = P.parse_text(text)
    assert msg["type"] == "prompt" and msg["id"] == 3 and msg["width"] == 640
    prompt = P.parse_prompt(msg, 320, 240)
    assert prompt.box == (50, 25, 100, 50)
    assert prompt.points == ((160, 120),) and prompt.labels == (1,)
    # A box hanging over the edge is clipped into the frame rather than refused.
    clipped = P.parse_prompt({"type": "prompt", "box": [600, 400, 100, 100], "width": 640, "height": 480}, 64, 48)
    assert clipped.box == (60, 40, 4, 8)


def test_a_prompt_adds_its_subject_only_with_add_true() -> None:
    box = P.Prompt(box=(10, 10, 50, 50))
    added = P.parse_text(P.prompt_message(box, 100, 100, 7, add=True))
    plain = P.parse_text(P.prompt_message(box, 100, 100, 7))
    assert added["add"] is True and "add" not in plain
    assert P.prompt_adds(added) and not P.prompt_adds(plain) and not P.prompt_adds({**plain, "add": False})
    assert P.parse_prompt(added, 100, 100) == P.parse_prompt(plain, 100, 100) == box


@pytest.mark.parametrize("add", [None, 1, 0, 1.0, "true", "", [], [True], {}, {"add": True}, 2**70, float("nan")])
def test_an_add_that_is_not_a_boolean_is_refused(add: object) -> None:
    msg = {"type": "prompt", "box": [10, 10, 50, 50], "width": 100, "height": 100, "add": add}
    with pytest.raises(P.LinkProtocolError, match="add must be true or false"):
        P.prompt_adds(msg)
    with pytest.raises(P.LinkProtocolError, match="add must be true or false"):
        P.parse_prompt(msg, 100, 100)


@pytest.mark.parametrize(
    ("msg", "error"),
    [
        ({"box": [1, 2, 3], "width": 10, "height": 10}, P.LinkProtocolError),
        ({"box": [1, 2, 3, "x"], "width": 10, "height": 10}, P.LinkProtocolError),
        ({"box": None, "points": [[1, 2]], "labels": [], "width": 10, "height": 10}, P.LinkProtocolError),
        ({"points": [[1, 2]], "labels": [2], "width": 10, "height": 10}, P.LinkProtocolError),
        ({"points": [[1, 2]], "labels": [1], "width": 0, "height": 10}, P.LinkProtocolError),
        ({"points": [[1, 2]], "labels": [1]}, P.LinkProtocolError),
        ({"box": [1, 1, float("nan"), 2], "width": 10, "height": 10}, P.LinkProtocolError),
        ({"box": None, "points": [], "labels": [], "width": 10, "height": 10}, PromptError),
        ({"points": [[1, 2]], "labels": [0], "width": 10, "height": 10}, PromptError),
        ({"box": [20, 20, 5, 5], "width": 10, "height": 10}, PromptError),
    ],
)
def test_bad_prompt_messages_are_refused(msg: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        P.parse_prompt({"type": "prompt", **msg}, 100, 100)


@pytest.mark.parametrize("text", ["", "[1]", '{"t": 1}', '{"type": 3}', "{" * 3, "x" * (P.MAX_TEXT_MESSAGE + 1)])
def test_bad_text_messages_are_refused(text: str) -> None:
    with pytest.raises(P.LinkProtocolError):
        P.parse_text(text)


def test_redact_never_shows_a_whole_token() -> None:
    assert P.redact("abcdefghijklmnop") == "abcd…"
    assert P.redact("short") == "…"


@pytest.mark.parametrize(
    ("url", "expect"),
    [
        ("http://gpu:8470", "http://gpu:8470"),
        ("gpu:8470", "http://gpu:8470"),
        ("https://gpu.example.org:8470/", "https://gpu.example.org:8470"),
        ("https://gpu:8470/whip", "https://gpu:8470"),
        ("http://[::1]:8470", "http://[::1]:8470"),
    ],
)
def test_server_urls_are_normalised(url: str, expect: str) -> None:
    assert base_url(url) == expect


@pytest.mark.parametrize("url", ["ftp://gpu:8470", "http://", "http://gpu:99999"])
def test_bad_server_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError):
        base_url(url)


@pytest.mark.parametrize(
    ("size", "resolution", "expect"),
    [((1280, 720), 256, (456, 256)), ((640, 480), 1024, (640, 480)), ((161, 121), 256, (160, 120))],
)
def test_frames_go_up_with_their_shorter_side_at_the_model_size(size, resolution, expect) -> None:
    assert send_size(*size, resolution) == expect


@pytest.mark.parametrize(
    ("kw", "fragment"),
    [
        ({"port": 70000}, "port"),
        ({"port": -1}, "port"),
        ({"max_sessions": 0}, "max-sessions"),
        ({"cert_file": "c.pem"}, "go together"),
        ({"token": "  "}, "empty"),
    ],
)
def test_bad_serve_settings_are_refused(kw: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        ServeSettings(**kw).validate()
    ServeSettings(port=0).validate()  # any free port


def _registry(**kw: Any) -> Any:
    from greenscreen_cam.link.sessions import SessionRegistry
    from greenscreen_cam.link.worker import ModelWorker

    worker = ModelWorker(None, model_name="tiny", device="cpu", resolution=256)
    return SessionRegistry(ServeSettings(**kw), "t" * 16, worker)


def test_admission_follows_max_sessions_and_the_measured_step_time() -> None:
    server = _registry(max_sessions=3, min_fps=10)
    assert server.admission_refusal() is None  # nothing measured yet
    server.sessions = {"a": object()}
    server.worker.step_times = {1: 0.03}  # 33 fps alone
    assert server.worker.predicted_fps(2) == pytest.approx(1 / 0.06)
    assert server.admission_refusal() is None
    server.worker.step_times = {1: 0.08}  # 12.5 fps alone, about 6 with two sessions
    assert "server busy" in (server.admission_refusal() or "")
    server.worker.step_times = {1: 0.08, 2: 0.09}  # batching: two cost little more than one
    assert server.admission_refusal() is None
    server.sessions = {k: object() for k in "abc"}
    assert "server full: 3 of 3" in (server.admission_refusal() or "")
    assert server.check_token("t" * 16) and not server.check_token("t" * 15) and not server.check_token("")


def _vp8_packets(n_frames: int) -> list:
    """Real aiortc RTP packets of ``n_frames`` VP8 frames (several packets each)."""
    from fractions import Fraction

    import av
    from aiortc.codecs.vpx import Vp8Encoder
    from aiortc.rtp import RtpPacket

    enc = Vp8Encoder()
    rng = np.random.default_rng(0)
    packets, seq = [], 1000
    for i in range(n_frames):
        frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8), format="rgb24")
        frame.pts, frame.time_base = i * 3000, Fraction(1, 90000)
        payloads, ts = enc.encode(frame, force_keyframe=True)
        for j, payload in enumerate(payloads):
            packet = RtpPacket(payload_type=96, sequence_number=seq, timestamp=ts)
            packet.payload, packet.marker = payload, int(j == len(payloads) - 1)
            packet._data = payload  # what the receiver's depayloader would set (only joined here)
            packets.append(packet)
            seq += 1
    return packets


def test_marker_jitter_buffer_completes_a_frame_on_its_last_packet() -> None:
    from aiortc.jitterbuffer import JitterBuffer

    from greenscreen_cam.link.server import use_marker_jitter_buffer

    class FakeReceiver:
        def __init__(self) -> None:
            self._RTCRtpReceiver__jitter_buffer = JitterBuffer(capacity=512, is_video=True)

    stock, patched = FakeReceiver(), FakeReceiver()
    assert use_marker_jitter_buffer(patched)
    assert not use_marker_jitter_buffer(patched)  # already replaced: left alone
    packets = _vp8_packets(3)
    assert len(packets) > 3, "need multi-packet frames"
    out_stock, out_patched = [], []
    for p in packets:
        out_stock.append(stock._RTCRtpReceiver__jitter_buffer.add(p)[1])
        out_patched.append(patched._RTCRtpReceiver__jitter_buffer.add(p)[1])
    markers = [i for i, p in enumerate(packets) if p.marker]
    done_patched = [i for i, f in enumerate(out_patched) if f is not None]
    done_stock = [i for i, f in enumerate(out_stock) if f is not None]
    assert done_patched == markers  # every frame, as soon as its last packet is in
    assert done_stock == [m + 1 for m in markers[:-1]]  # stock aiortc: only when the next frame starts
    for f_p, f_s in zip([out_patched[i] for i in markers[:-1]], [out_stock[i + 1] for i in markers[:-1]], strict=True):
        assert f_p.timestamp == f_s.timestamp and f_p.data == f_s.data


def test_aiortc_keeps_the_private_details_the_link_relies_on() -> None:
    """The frame-tag mapping reads a few aiortc internals; an upgrade that renames them must fail here."""
    import inspect

    from aiortc import rtcrtpreceiver, rtcrtpsender

    assert "self.__rtp_timestamp = packet.timestamp" in inspect.getsource(rtcrtpsender.RTCRtpSender._run_rtp)
    assert "__packet_count" in inspect.getsource(rtcrtpsender.RTCRtpSender._run_rtp)
    assert "self.__timestamp_mapper" in inspect.getsource(rtcrtpreceiver.RTCRtpReceiver)
    assert "self._origin" in inspect.getsource(rtcrtpreceiver.TimestampMapper)
    assert json.loads(json.dumps({"ok": True}))


def test_no_third_party_stun_server_unless_asked() -> None:
    from greenscreen_cam.link.client import RemoteTracker

    server = _registry()
    assert server.new_peer_connection()._RTCPeerConnection__configuration.iceServers == []
    client = RemoteTracker("http://127.0.0.1:9", "t", width=4, height=4)
    assert client._configuration().iceServers == []
    server = _registry(ice_servers=["turn:turn.example.org:3478"], turn_username="u", turn_password="p")
    (ice,) = server.new_peer_connection()._RTCPeerConnection__configuration.iceServers
    assert (ice.urls, ice.username, ice.credential) == ("turn:turn.example.org:3478", "u", "p")
    client = RemoteTracker("http://h:1", "t", width=4, height=4, ice_servers=["stun:stun.example.org"])
    assert [s.urls for s in client._configuration().iceServers] == ["stun:stun.example.org"]


def test_random_weights_are_those_of_a_local_random_checkpoint(tiny_model) -> None:
    """``serve --random-weights`` and ``start --random-weights`` must track with the same weights."""
    import torch

    from greenscreen_cam.link.server import load_serving_model

    model, name, device, res = load_serving_model(
        ServeSettings(model="tiny", resolution=256, device="cpu"), random_weights=True
    )
    assert (name, device, res) == ("tiny", "cpu", 256)
    mine, theirs = model.state_dict(), tiny_model.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
