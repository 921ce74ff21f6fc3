// Worker for RTCRtpScriptTransform: reports when each encoded camera frame leaves, by RTP
// timestamp, so the capture page can measure capture -> mask latency. Frames pass unchanged.
/* global onrtctransform */
onrtctransform = (event) => {
  const { readable, writable } = event.transformer;
  readable
    .pipeThrough(
      new TransformStream({
        transform(frame, controller) {
          const meta = frame.getMetadata ? frame.getMetadata() : {};
          const ts = meta.rtpTimestamp ?? frame.timestamp;
          // Absolute time: a worker's performance.now() has its own origin.
          postMessage({ ts: ts >>> 0, at: performance.timeOrigin + performance.now() });
          controller.enqueue(frame);
        },
      }),
    )
    .pipeTo(writable)
    .catch(() => {});
};
