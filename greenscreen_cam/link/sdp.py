"""SDP offers checked before they are answered, and the answer's interop fixes (RFC 9725 WHIP/WHEP).

Standard library only, no aiortc: the checks are plain text rules, unit-tested with tables.

aiortc's SDP parser trusts its input. An offer without ``a=fingerprint`` is answered
and then fails deep inside DTLS with an assertion; an offer with no codecs ends in
``coroutine raised StopIteration``; a malformed ``a=candidate`` or ``c=`` line is an
``AssertionError``. :func:`check_offer` refuses all of these first with
:class:`~greenscreen_cam.errors.OfferError`, whose one-line reason the HTTP layer sends
back with ``400``. It checks exactly the parts of the offer aiortc reads, in the form
aiortc reads them, so an offer it accepts parses.

:func:`fix_answer` makes aiortc's answer fit the offer: ``a=group:BUNDLE`` only when the
offer bundles. The DTLS role (``a=setup:passive``, the server role RFC 9725 expects of a
media server) is set on the peer connection before the answer is made; see
:func:`greenscreen_cam.link.interop.prefer_dtls_server`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from greenscreen_cam.errors import OfferError

MAX_OFFER_BYTES = 64 * 1024
"""Largest offer accepted (a browser's offer is 3-8 kB, GStreamer's 2-5 kB)."""
MAX_LINE = 4096
"""Longest SDP line accepted."""
MAX_MEDIA = 16
"""Most media sections accepted in one offer."""
MAX_CANDIDATES = 64
"""Most ``a=candidate`` lines accepted per media section."""

VIDEO_CODECS = frozenset({"vp8", "h264"})
"""Video codecs aiortc can decode and encode (by rtpmap encoding name, case-insensitive)."""
AUDIO_CODECS = frozenset({"opus", "pcmu", "pcma", "g722"})
FINGERPRINT_ALGORITHMS = frozenset({"sha-256", "sha-384", "sha-512"})
"""The certificate digests aiortc can verify."""
SETUP_VALUES = frozenset({"actpass", "active", "passive"})
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
FORBIDDEN_PAYLOAD_TYPES = range(72, 77)
"""RTP payload types that collide with RTCP packet types (RFC 5761)."""
FMTP_INT_PARAMETERS = frozenset({"apt", "max-fr", "max-fs", "maxplaybackrate", "minptime", "stereo", "useinbandfec"})
"""fmtp parameters aiortc converts with ``int()``."""

_LINE = re.compile(r"^[a-z]=")
_MEDIA = re.compile(r"^m=([^ ]+) ([0-9]+) ([A-Z/]+) (.+)$")
_CONN = re.compile(r"^IN (IP4|IP6) ([^ ]+)$")
_ICE_CHARS = re.compile(r"^[A-Za-z0-9+/]+$")
_HEX_PAIRS = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2})+$")
_INT = re.compile(r"^[0-9]{1,10}$")
_TOKEN = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+$")


@dataclass(frozen=True)
class Media:
    """One media section of a checked offer.

    Attributes:
        kind: ``"video"``, ``"audio"``, ``"application"``, ...
        mid: Its ``a=mid`` (None when it has none).
        direction: ``sendrecv``, ``sendonly``, ``recvonly`` or ``inactive`` (from the offerer's side).
        codecs: Lower-case encoding names of its ``a=rtpmap`` lines, in order (``("vp8", "rtx")``).
        port: The port of its ``m=`` line (0: the offerer disabled it).
    """

    kind: str
    mid: str | None
    direction: str
    codecs: tuple[str, ...]
    port: int


@dataclass(frozen=True)
class Offer:
    """What :func:`check_offer` learned about an offer.

    Attributes:
        media: The media sections, in order.
        bundle: The mids of its ``a=group:BUNDLE`` line, or None when the offer does not bundle.
        setup: The DTLS ``a=setup`` value of its first section: ``actpass``, ``active`` or ``passive``.
        data_channel: True when it has an SCTP (data channel) section.
        trickle: True when it announces ``a=ice-options:trickle``.
        candidates: How many ``a=candidate`` lines it carries in all.
    """

    media: tuple[Media, ...]
    bundle: tuple[str, ...] | None
    setup: str
    data_channel: bool
    trickle: bool
    candidates: int = 0

    def sends_video(self) -> bool:
        """True when a usable video section sends to us (a publisher's offer)."""
        return any(m.kind == "video" and m.port and m.direction in ("sendrecv", "sendonly") for m in self.media)

    def receives_video(self) -> bool:
        """True when a usable video section receives from us (a viewer's offer)."""
        return any(m.kind == "video" and m.port and m.direction in ("sendrecv", "recvonly") for m in self.media)


def _refuse(reason: str, line_no: int | None = None) -> OfferError:
    where = f" (line {line_no})" if line_no is not None else ""
    return OfferError(f"bad SDP offer: {reason}{where}")


def _printable(text: str, limit: int = 40) -> str:
    """``text`` cut to ``limit`` characters with anything unprintable escaped (safe for logs)."""
    cut = text[:limit] + ("…" if len(text) > limit else "")
    return cut.encode("ascii", "backslashreplace").decode("ascii").replace("\x1b", "\\x1b")


def _attr(line: str) -> tuple[str, str | None]:
    body = line[2:]
    if ":" in body:
        name, value = body.split(":", 1)
        return name, value
    return body, None


class _Section:
    """The attributes of one media section (or of the session part), as they are read."""

    def __init__(self) -> None:
        self.fingerprints = 0
        self.setup: str | None = None
        self.ufrag: str | None = None
        self.pwd: str | None = None
        self.trickle = False


def _check_common(name: str, value: str | None, sec: _Section, line_no: int) -> None:
    """Attributes allowed at session and media level (fingerprint, setup, ICE credentials)."""
    if name == "fingerprint":
        bits = (value or "").split()
        if len(bits) != 2 or not _HEX_PAIRS.match(bits[1]):
            raise _refuse("a=fingerprint must be '<hash> <hex:hex:...>'", line_no)
        if bits[0].lower() not in FINGERPRINT_ALGORITHMS:
            raise _refuse(
                f"a=fingerprint hash {_printable(bits[0])!r} is not one of sha-256, sha-384, sha-512", line_no
            )
        sec.fingerprints += 1
    elif name == "setup":
        if value not in SETUP_VALUES:
            raise _refuse(f"a=setup:{_printable(value or '')} is not actpass, active or passive", line_no)
        sec.setup = value
    elif name in ("ice-ufrag", "ice-pwd"):
        text = value or ""
        low, high = (4, 256) if name == "ice-ufrag" else (22, 256)
        if not low <= len(text) <= high or not _ICE_CHARS.match(text):
            raise _refuse(f"a={name} must be {low}-{high} characters of A-Z a-z 0-9 + /", line_no)
        if name == "ice-ufrag":
            sec.ufrag = text
        else:
            sec.pwd = text
    elif name == "ice-options":
        sec.trickle = sec.trickle or "trickle" in (value or "").split()
    elif name == "group" and value is not None and not value.split():
        raise _refuse("empty a=group", line_no)


def _check_candidate(value: str, line_no: int) -> None:
    bits = value.split()
    if len(bits) < 8 or bits[6] != "typ":
        raise _refuse(
            "a=candidate needs '<foundation> <component> <transport> <priority> <ip> <port> typ <type>'", line_no
        )
    if not (_INT.match(bits[1]) and _INT.match(bits[3]) and _INT.match(bits[5])) or int(bits[5]) > 65535:
        raise _refuse("a=candidate has a non-numeric component, priority or port", line_no)
    for i in range(8, len(bits) - 1, 2):
        if bits[i] == "rport" and not _INT.match(bits[i + 1]):
            raise _refuse("a=candidate rport is not a number", line_no)


def _check_media_attr(
    name: str, value: str | None, kind: str, fmt: set[int], codecs: dict[int, str], line_no: int
) -> None:
    """Attributes aiortc parses inside a media section, in the form it parses them."""
    v = value or ""
    rtp = kind in ("audio", "video")
    if name == "rtpmap" and rtp:
        pt, _, desc = v.partition(" ")
        bits = desc.split("/")
        if not _INT.match(pt) or len(bits) < 2 or not bits[0] or not _INT.match(bits[1]):
            raise _refuse("a=rtpmap must be '<payload type> <name>/<clock rate>'", line_no)
        if kind == "audio" and len(bits) > 2 and not _INT.match(bits[2]):
            raise _refuse("a=rtpmap channel count is not a number", line_no)
        if int(pt) not in fmt:
            raise _refuse(f"a=rtpmap for payload type {pt}, which the m= line does not list", line_no)
        codecs[int(pt)] = bits[0].lower()
    elif name == "fmtp" and rtp:
        pt, _, params = v.partition(" ")
        if not _INT.match(pt) or not params:
            raise _refuse("a=fmtp must be '<payload type> <parameters>'", line_no)
        if int(pt) not in codecs:
            raise _refuse(f"a=fmtp for payload type {pt}, which has no a=rtpmap before it", line_no)
        for param in params.split(";"):
            key, eq, val = param.partition("=")
            if eq and key in FMTP_INT_PARAMETERS and not _INT.match(val):
                raise _refuse(f"a=fmtp parameter {_printable(key)} is not a number", line_no)
    elif name == "rtcp-fb" and rtp:
        bits = v.split(" ", 2)
        if len(bits) < 2 or not (bits[0] == "*" or _INT.match(bits[0])):
            raise _refuse("a=rtcp-fb must be '<payload type or *> <type> [parameter]'", line_no)
    elif name == "extmap":
        bits = v.split()
        ext_id = bits[0].split("/")[0] if bits else ""
        if len(bits) != 2 or not _INT.match(ext_id) or bits[0].count("/") > 1:
            raise _refuse("a=extmap must be '<id>[/direction] <uri>'", line_no)
    elif name == "candidate":
        _check_candidate(v, line_no)
    elif name in ("max-message-size", "sctp-port"):
        if not _INT.match(v):
            raise _refuse(f"a={name} is not a number", line_no)
    elif name == "sctpmap":
        pt, _, desc = v.partition(" ")
        if not _INT.match(pt) or not desc:
            raise _refuse("a=sctpmap must be '<port> <description>'", line_no)
    elif name == "rtcp":
        if not _INT.match(v.split(" ", 1)[0]):
            raise _refuse("a=rtcp port is not a number", line_no)
        if " " in v and not _CONN.match(v.split(" ", 1)[1]):
            raise _refuse("a=rtcp address must be 'IN IP4|IP6 <address>'", line_no)
    elif name == "ssrc":
        ssrc, _, desc = v.partition(" ")
        if not _INT.match(ssrc) or ":" not in desc:
            raise _refuse("a=ssrc must be '<ssrc> <attribute>:<value>'", line_no)
    elif name == "ssrc-group":
        bits = v.split()
        if not bits or not all(_INT.match(b) for b in bits[1:]):
            raise _refuse("a=ssrc-group must be '<semantics> <ssrc> ...'", line_no)


def check_offer(sdp: str, *, max_bytes: int = MAX_OFFER_BYTES) -> Offer:
    """Check an SDP offer before it is answered; raise OfferError with a short reason if it cannot work.

    Refused: an offer over ``max_bytes``, with NUL or control characters, a line that is
    not ``<letter>=<value>``, no ``v=0`` first, no media section, more than
    :data:`MAX_MEDIA` of them, no video section with a codec aiortc supports (VP8, H.264),
    no ``a=fingerprint`` (or one with a hash aiortc cannot check), no ``a=setup``, no ICE
    credentials, an audio/video section without ``a=rtcp-mux``, a BUNDLE group naming a
    mid that does not exist, and any attribute aiortc reads in a form it cannot read.

    Args:
        sdp: The offer's text (CRLF or LF line ends).
        max_bytes: Largest size accepted, in UTF-8 bytes.

    Returns:
        What the offer asks for (:class:`Offer`).

    Raises:
        OfferError: its message is one line, safe to send back and to log.
    """
    if not isinstance(sdp, str):
        raise _refuse("the offer is not text")
    size = len(sdp.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise _refuse(f"{size} bytes is over the {max_bytes}-byte limit")
    if not sdp.strip():
        raise _refuse("the offer is empty")
    bad = next((c for c in sdp if (ord(c) < 32 and c not in "\r\n\t") or ord(c) == 127), None)
    if bad is not None:
        raise _refuse(f"control character U+{ord(bad):04X} in the offer")
    lines = sdp.replace("\r\n", "\n").split("\n")
    while lines and not lines[-1]:
        lines.pop()
    if any("\r" in line for line in lines):
        raise _refuse("a bare CR inside a line")
    session = _Section()
    sections: list[tuple[_Section, int, list[tuple[int, str]]]] = []
    bundle: tuple[str, ...] | None = None
    for no, line in enumerate(lines, 1):
        if not line and no > 1:
            continue  # a blank line carries nothing (aiortc skips it too)
        if len(line) > MAX_LINE:
            raise _refuse(f"a line of {len(line)} characters (limit {MAX_LINE})", no)
        if not _LINE.match(line):
            raise _refuse(f"{_printable(line)!r} is not an SDP '<letter>=<value>' line", no)
        if no == 1 and line.strip() != "v=0":
            raise _refuse("it must begin with v=0", no)
        if line.startswith("m="):
            if len(sections) >= MAX_MEDIA:
                raise _refuse(f"more than {MAX_MEDIA} media sections")
            sections.append((_Section(), no, []))
            continue
        if sections:
            sections[-1][2].append((no, line))
            continue
        if line.startswith("v=") and no != 1:
            raise _refuse("a second v= line", no)
        if line.startswith("c=") and not _CONN.match(line[2:]):
            raise _refuse("c= must be 'IN IP4|IP6 <address>'", no)
        if line.startswith("a="):
            name, value = _attr(line)
            _check_common(name, value, session, no)
            if name == "group" and value is not None and value.split()[0] == "BUNDLE":
                bundle = tuple(value.split()[1:])
    if not sections:
        raise _refuse("no media section (m=)")

    media: list[Media] = []
    candidates = 0
    trickle = session.trickle
    for sec, m_no, body in sections:
        m = _MEDIA.match(lines[m_no - 1])
        if m is None:
            raise _refuse("m= must be '<media> <port> <PROTO/FILE> <formats>'", m_no)
        kind, port, fmt_text = m.group(1), int(m.group(2)), m.group(4).split()
        if port > 65535:
            raise _refuse(f"m= port {port} is not a port", m_no)
        fmt: set[int] = set()
        if kind in ("audio", "video"):
            for f in fmt_text:
                if not _INT.match(f) or int(f) > 127 or int(f) in FORBIDDEN_PAYLOAD_TYPES:
                    raise _refuse(f"payload type {_printable(f)!r} is not 0-71 or 77-127", m_no)
                fmt.add(int(f))
        codecs: dict[int, str] = {}
        mid: str | None = None
        direction = "sendrecv"
        rtcp_mux = False
        count = 0
        for no, line in body:
            if line.startswith("c=") and not _CONN.match(line[2:]):
                raise _refuse("c= must be 'IN IP4|IP6 <address>'", no)
            if not line.startswith("a="):
                continue
            name, value = _attr(line)
            _check_common(name, value, sec, no)
            _check_media_attr(name, value, kind, fmt, codecs, no)
            if name == "mid":
                if not value or not _TOKEN.match(value):
                    raise _refuse("a=mid must be a non-empty token", no)
                mid = value
            elif name in DIRECTIONS:
                direction = name
            elif name == "rtcp-mux":
                rtcp_mux = True
            elif name == "candidate":
                count += 1
                if count > MAX_CANDIDATES:
                    raise _refuse(f"more than {MAX_CANDIDATES} candidates in one media section", no)
        candidates += count
        trickle = trickle or sec.trickle
        what = f"the {kind} section (line {m_no})"
        if not (sec.fingerprints or session.fingerprints):
            raise _refuse(f"{what} has no a=fingerprint (DTLS cannot be checked)")
        if (sec.setup or session.setup) is None:
            raise _refuse(f"{what} has no a=setup")
        if not (sec.ufrag or session.ufrag) or not (sec.pwd or session.pwd):
            raise _refuse(f"{what} has no a=ice-ufrag / a=ice-pwd")
        if kind in ("audio", "video") and not rtcp_mux:
            raise _refuse(f"{what} has no a=rtcp-mux (WebRTC needs RTP and RTCP on one port)")
        if mid is not None and any(x.mid == mid for x in media):
            raise _refuse(f"a=mid:{_printable(mid)} is used twice")
        names = tuple(codecs[int(pt)] for pt in fmt_text if _INT.match(pt) and int(pt) in codecs)
        media.append(Media(kind=kind, mid=mid, direction=direction, codecs=names, port=port))

    videos = [x for x in media if x.kind == "video" and x.port]
    if not videos:
        raise _refuse("no video section (m=video with a port)")
    if not any(VIDEO_CODECS & set(x.codecs) for x in videos):
        offered = sorted({c for x in videos for c in x.codecs if c not in ("rtx", "red", "ulpfec")})
        have = ", ".join(offered) if offered else "none"
        raise _refuse(f"no video codec greencam can decode (VP8 or H264; offered: {_printable(have, 60)})")
    if bundle is not None:
        mids = {x.mid for x in media}
        missing = [b for b in bundle if b not in mids]
        if missing:
            raise _refuse(f"a=group:BUNDLE names mid {_printable(missing[0])!r}, which no section has")
    first = sections[0][0]
    return Offer(
        media=tuple(media),
        bundle=bundle,
        setup=first.setup or session.setup or "actpass",
        data_channel=any(x.kind == "application" and x.port for x in media),
        trickle=trickle,
        candidates=candidates,
    )


def fix_answer(answer: str, offer: Offer) -> str:
    """aiortc's answer made to fit ``offer``: no ``a=group:BUNDLE`` when the offer had none.

    aiortc always adds a BUNDLE group to its answer; RFC 8843 lets an answer bundle only
    what the offer bundled, and a client that did not offer BUNDLE may refuse the answer.

    Args:
        answer: The answer SDP as aiortc made it (CRLF line ends).
        offer: The checked offer it answers.
    """
    if offer.bundle is not None:
        return answer
    lines = answer.split("\r\n")
    kept = [line for line in lines if not line.startswith("a=group:BUNDLE")]
    return "\r\n".join(kept)
