"""WebRTC helpers that depend on the settings alone: the one peer-connection builder, aiortc details.

Every ``RTCPeerConnection`` in greencam (the server's sessions, its viewers, the client) is made by
:func:`new_peer_connection`. aiortc's default configuration asks Google's public STUN server (and
waits up to 5 s for it where UDP is filtered); here the ICE servers are exactly the user's
``--ice-server`` list, empty by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def rtc_configuration(
    ice_servers: Sequence[str] = (), username: str | None = None, credential: str | None = None
) -> Any:
    """An aiortc ``RTCConfiguration`` with exactly these STUN/TURN URLs (empty: no server at all).

    Args:
        ice_servers: ``stun:``/``turn:``/``turns:`` URLs, e.g. from ``--ice-server``.
        username: TURN username (``--turn-username``), used for every URL.
        credential: TURN password (``--turn-password``).
    """
    from aiortc import RTCConfiguration, RTCIceServer

    servers = [RTCIceServer(urls=u, username=username, credential=credential) for u in ice_servers]
    return RTCConfiguration(iceServers=servers)  # a list, never None: None means Google's STUN server


def new_peer_connection(
    ice_servers: Sequence[str] = (), username: str | None = None, credential: str | None = None
) -> Any:
    """A new aiortc ``RTCPeerConnection`` configured by :func:`rtc_configuration`."""
    from aiortc import RTCPeerConnection

    return RTCPeerConnection(rtc_configuration(ice_servers, username, credential))


def use_marker_jitter_buffer(receiver: Any) -> bool:
    """Make aiortc's video receiver hand a frame to the decoder as soon as its last packet arrives.

    aiortc's jitter buffer only knows a frame is complete when the first packet of
    the *next* frame arrives, which delays every mask by one frame interval and
    would stall a client that waits for each frame's mask before sending the next
    (``RemoteTracker.track_sync``). RTP marks the last packet of a video frame
    (the marker bit), so a frame is complete when its run of packets ends with it.

    Returns:
        True when the receiver's buffer was replaced (False: not an aiortc video receiver we know).
    """
    from aiortc.jitterbuffer import JitterBuffer, JitterFrame

    class MarkerJitterBuffer(JitterBuffer):
        def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
            assert self._origin is not None
            timestamp = None
            packets: list[Any] = []
            for count in range(self.capacity):
                packet = self._packets[(self._origin + count) % self.capacity]
                if packet is None:
                    return None
                if timestamp is None:
                    timestamp = packet.timestamp
                # aiortc's RtpPacket._data: the depayloaded payload its depacketizer set (this jitter buffer's one private read)
                elif packet.timestamp != timestamp:  # the next frame began: this one is complete
                    self.remove(count)
                    return JitterFrame(data=b"".join(p._data for p in packets), timestamp=timestamp)
                packets.append(packet)
                if packet.marker:  # the frame's last packet, and all before it are here
                    self.remove(count + 1)
                    return JitterFrame(data=b"".join(p._data for p in packets), timestamp=timestamp)
            return None

    attr = "_RTCRtpReceiver__jitter_buffer"
    old = getattr(receiver, attr, None)
    if type(old) is not JitterBuffer or not getattr(old, "_is_video", False):
        return False
    setattr(receiver, attr, MarkerJitterBuffer(capacity=old.capacity, is_video=True))
    return True


def rtp_origin(receiver: Any) -> int:
    """The RTP timestamp aiortc's receiver subtracted from the frames' pts (0 when unknown)."""
    mapper = getattr(receiver, "_RTCRtpReceiver__timestamp_mapper", None)
    origin = getattr(mapper, "_origin", None)
    return int(origin) if origin is not None else 0
