"""SDP offers checked before they are answered (greenscreen_cam.link.sdp): tables of real-shaped offers."""

from __future__ import annotations

import re

import pytest

from greenscreen_cam.errors import GreencamError, OfferError, ServeBadRequest
from greenscreen_cam.link import sdp as S

FP = "sha-256 " + ":".join(["AB"] * 32)
# The shape of a browser's (or aiortc's) publisher offer: bundled VP8 + H.264 video and a data channel.
OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 4005148989 4005148989 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "a=msid-semantic:WMS *",
        "m=video 48159 UDP/TLS/RTP/SAVPF 97 98 99",
        "c=IN IP4 192.0.2.2",
        "a=sendonly",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=mid:0",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=rtcp-mux",
        "a=ssrc-group:FID 1451929913 3487045094",
        "a=ssrc:1451929913 cname:8f16963d",
        "a=rtpmap:97 VP8/90000",
        "a=rtcp-fb:97 nack pli",
        "a=rtpmap:98 rtx/90000",
        "a=fmtp:98 apt=97",
        "a=rtpmap:99 H264/90000",
        "a=fmtp:99 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        "a=candidate:f957a2332b 1 udp 2130706431 192.0.2.2 48159 typ host",
        "a=candidate:a2 1 udp 1694498815 203.0.113.9 40000 typ srflx raddr 192.0.2.2 rport 48159",
        "a=end-of-candidates",
        "a=ice-ufrag:7YSL",
        "a=ice-pwd:b0sfICaSMPuCJmiluzPLDr",
        "a=fingerprint:" + FP,
        "a=setup:actpass",
        "m=application 50910 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 192.0.2.2",
        "a=mid:1",
        "a=sctp-port:5000",
        "a=max-message-size:262144",
        "a=ice-ufrag:7YSL",
        "a=ice-pwd:b0sfICaSMPuCJmiluzPLDr",
        "a=fingerprint:" + FP,
        "a=setup:actpass",
        "",
    ]
)
# A GStreamer webrtcbin-style offer: session-level credentials, no BUNDLE, no data channel, trickle.
GST_OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 1234 0 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "a=ice-options:trickle",
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "c=IN IP4 0.0.0.0",
        "a=setup:actpass",
        "a=ice-ufrag:Zx0eNvQbKQc9rbbT1S2yImbE1RpZ9aZL",
        "a=ice-pwd:7mNdzmA1iqxRoOuAwAKFjCq7yXbvhnS6",
        "a=rtcp-mux",
        "a=rtcp-rsize",
        "a=sendonly",
        "a=rtpmap:96 VP8/90000",
        "a=rtcp-fb:96 nack pli",
        "a=fingerprint:" + FP,
        "",
    ]
)


def _swap(old: str, new: str, text: str = OFFER) -> str:
    assert old in text, old  # the table must change something
    return text.replace(old, new)


def test_a_real_shaped_publisher_offer_is_read() -> None:
    offer = S.check_offer(OFFER)
    assert [m.kind for m in offer.media] == ["video", "application"]
    video = offer.media[0]
    assert (video.mid, video.direction, video.codecs) == ("0", "sendonly", ("vp8", "rtx", "h264"))
    assert offer.bundle == ("0", "1") and offer.setup == "actpass"
    assert offer.data_channel and not offer.trickle and offer.candidates == 2
    assert offer.sends_video() and not offer.receives_video()


def test_a_webrtcbin_offer_without_bundle_or_data_channel_is_read() -> None:
    offer = S.check_offer(GST_OFFER.replace("\r\n", "\n"))  # LF line ends are read too
    assert offer.bundle is None and not offer.data_channel and offer.trickle
    assert offer.media[0].codecs == ("vp8",) and offer.media[0].mid is None


@pytest.mark.parametrize(
    ("sdp", "fragment"),
    [
        ("", "empty"),
        (" \r\n", "empty"),
        ("x" * (S.MAX_OFFER_BYTES + 1), "over the"),
        (_swap("v=0", "v=1"), "begin with v=0"),
        (_swap("s=-\r\n", "s=-\r\nv=0\r\n"), "second v="),
        (_swap("s=-", "s=-\x00"), "control character U+0000"),
        (_swap("s=-", "s=\x1b[2J"), "control character U+001B"),
        (_swap("s=-\r\n", "s=-\rt=0 0\r\n"), "bare CR"),
        (_swap("t=0 0", "hello"), "not an SDP"),
        (_swap("t=0 0", "T=0 0"), "not an SDP"),
        (_swap("t=0 0", "t=" + "0" * 5000), "line of 5002"),
        ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", "no media section"),
        (OFFER.split("m=video")[0] + "m=video 9 UDP/TLS/RTP/SAVPF 97 98 99\r\n" * 17, "more than 16"),
        (_swap("m=video 48159 UDP/TLS/RTP/SAVPF 97 98 99", "m=video x UDP 97"), "m= must be"),
        (_swap("m=video 48159 UDP", "m=video 70000 UDP"), "not a port"),
        (_swap("SAVPF 97 98 99", "SAVPF 97 98 99 300"), "'300' is not"),
        (_swap("SAVPF 97 98 99", "SAVPF 97 98 99 72"), "'72' is not"),
        (_swap("SAVPF 97 98 99", "SAVPF 97 98 99 x"), "'x' is not"),
        (_swap("m=video 48159", "m=video 0"), "no video section"),
        (_swap("m=video", "m=audio"), "no video section"),
        (_swap("a=rtpmap:97 VP8/90000", "a=rtpmap:97 AV1/90000").replace("H264/", "VP9/"), "offered: av1, vp9"),
        (_swap("a=rtpmap:97 VP8/90000", "a=rtpmap:96 VP8/90000"), "does not list"),
        (_swap("a=rtpmap:97 VP8/90000", "a=rtpmap:97 VP8"), "a=rtpmap must be"),
        (_swap("a=rtpmap:97 VP8/90000", "a=rtpmap:97 VP8/fast"), "a=rtpmap must be"),
        (_swap("a=fmtp:98 apt=97", "a=fmtp:98 apt=ninety"), "apt is not a number"),
        (_swap("a=fmtp:98 apt=97", "a=fmtp:120 apt=97"), "no a=rtpmap before it"),
        (_swap("a=fmtp:98 apt=97", "a=fmtp:98"), "a=fmtp must be"),
        (_swap("a=rtcp-fb:97 nack pli", "a=rtcp-fb:nack"), "a=rtcp-fb must be"),
        (_swap("a=extmap:1 urn", "a=extmap:one urn"), "a=extmap must be"),
        (_swap("typ host\r\na=candidate:a2", "host\r\na=candidate:a2"), "a=candidate needs"),
        (_swap("192.0.2.2 48159 typ host", "192.0.2.2 port typ host"), "non-numeric"),
        (_swap("rport 48159", "rport x"), "rport is not"),
        (_swap("a=end-of-candidates", "a=candidate:c 1 udp 1 192.0.2.2 9 typ host\r\n" * 65), "more than 64"),
        (_swap("c=IN IP4 192.0.2.2\r\na=sendonly", "c=192.0.2.2\r\na=sendonly"), "c= must be"),
        (_swap("a=rtcp:9 IN IP4 0.0.0.0", "a=rtcp:nine"), "a=rtcp port"),
        (_swap("a=rtcp:9 IN IP4 0.0.0.0", "a=rtcp:9 somewhere"), "a=rtcp address"),
        (_swap("a=ssrc:1451929913 cname:8f16963d", "a=ssrc:1451929913 cname"), "a=ssrc must be"),
        (_swap("a=ssrc-group:FID 1451929913", "a=ssrc-group:FID x"), "a=ssrc-group"),
        (_swap("a=sctp-port:5000", "a=sctp-port:many"), "a=sctp-port is not"),
        (_swap("a=max-message-size:262144", "a=max-message-size:-1"), "max-message-size"),
        (_swap("a=mid:1", "a=mid:0"), "used twice"),
        (_swap("a=mid:1", "a=mid:"), "a=mid must be"),
        (_swap("a=group:BUNDLE 0 1", "a=group:BUNDLE 0 7"), "names mid '7'"),
        (_swap("a=group:BUNDLE 0 1", "a=group:"), "empty a=group"),
        (_swap("a=fingerprint:" + FP, "a=fingerprint-was-here"), "no a=fingerprint"),
        (_swap("a=fingerprint:" + FP, "a=fingerprint:sha-1 AB:CD"), "not one of sha-256"),
        (_swap("a=fingerprint:" + FP, "a=fingerprint:sha-256 nothex"), "a=fingerprint must be"),
        (_swap("a=fingerprint:" + FP, "a=fingerprint:sha-256"), "a=fingerprint must be"),
        (_swap("a=setup:actpass", "a=setup:holdconn"), "not actpass, active or passive"),
        (_swap("a=setup:actpass", "a=x-setup:actpass"), "no a=setup"),
        (_swap("a=ice-ufrag:7YSL", "a=ice-ufrag:7Y"), "a=ice-ufrag must be"),
        (_swap("a=ice-pwd:b0sfICaSMPuCJmiluzPLDr", "a=ice-pwd:short"), "a=ice-pwd must be"),
        (_swap("a=ice-pwd:b0sfICaSMPuCJmiluzPLDr", "a=ice-pwd:b0sfICaSMPuCJmiluzPLD;"), "a=ice-pwd must be"),
        (_swap("a=ice-ufrag:7YSL", "a=x:7YSL"), "no a=ice-ufrag"),
        (_swap("a=rtcp-mux\r\n", ""), "no a=rtcp-mux"),
        (_swap("a=fingerprint:" + FP, "a=fingerprint-gone", GST_OFFER), "no a=fingerprint"),
    ],
)
def test_offers_that_cannot_work_are_refused_with_a_reason(sdp: str, fragment: str) -> None:
    with pytest.raises(OfferError, match=re.escape(fragment)) as caught:
        S.check_offer(sdp)
    message = str(caught.value)
    assert message.startswith("bad SDP offer: ") and "\n" not in message and "\x1b" not in message
    assert len(message) < 200


def test_the_error_is_a_bad_request_so_the_server_answers_400() -> None:
    from greenscreen_cam.link.auth import status_of

    assert issubclass(OfferError, ServeBadRequest) and issubclass(OfferError, GreencamError)
    assert status_of(OfferError("bad SDP offer: x")) == 400


def test_a_non_ascii_line_is_quoted_safely_in_the_reason() -> None:
    with pytest.raises(OfferError) as caught:
        S.check_offer(_swap("t=0 0", "\u202egreencam: session FAKE started"))
    assert "\u202e" not in str(caught.value) and "\\u202e" in str(caught.value)


def test_session_level_fingerprint_setup_and_credentials_cover_every_section() -> None:
    body = GST_OFFER.replace("a=fingerprint:" + FP + "\r\n", "").replace("a=setup:actpass\r\n", "")
    head, media = body.split("m=video", 1)
    moved = head + "a=fingerprint:" + FP + "\r\na=setup:passive\r\nm=video" + media
    assert S.check_offer(moved).setup == "passive"


def test_the_answer_bundles_only_when_the_offer_did() -> None:
    answer = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\nm=video 9 X 96\r\na=mid:0\r\n"
    unbundled = S.fix_answer(answer, S.check_offer(GST_OFFER))
    assert "a=group:BUNDLE" not in unbundled and unbundled.endswith("a=mid:0\r\n")
    assert S.fix_answer(answer, S.check_offer(OFFER)) == answer
