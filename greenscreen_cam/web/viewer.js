// The viewer page for OBS Browser Source: receive-only, the keyed subject on a transparent page.
//
// /view/<session>?token=VIEWER_TOKEN[&background=key|transparent|blur|#rrggbb]
// It receives the publisher's video relayed by greencam serve and the same masks the capture
// page gets, and keys them here; it never asks for a camera.

import { Keyer } from "./keyer.js";
import { decodeMask, iceGathered, postOffer, Rate, seqNewer, SignalError } from "./protocol.js";

const params = new URLSearchParams(location.search);
const session = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
const token = params.get("token") || "";
const debug = params.get("debug") === "1";
const video = document.getElementById("remote");
const canvas = document.getElementById("output");
const messageEl = document.getElementById("message");
const keyer = new Keyer(canvas, { background: params.get("background") || "transparent", debug });

const stats = { frames: 0, masks: 0, maskFps: 0, latencyMs: null, fps: 0, state: "connecting" };
const frameRate = new Rate();
const maskRate = new Rate(5000); // masks can be slow (a few per second on a CPU server)
const SILENT_MS = 10000;
let conn = null;
let paused = false;
let lastFrameAt = 0; // performance.now() of the last video frame drawn
let retryTimer = null;
let waitMs = 2500; // retry delay while the link has no live session (grows to 15 s)

window.greencam = {
  stats,
  keyer,
  history: debug ? new Map() : null,
  get lastMask() {
    return keyer.mask;
  },
  get drawnMask() {
    return keyer.drawnMask;
  },
  pause(seq) {
    paused = true;
    if (seq !== undefined && this.history?.has(seq)) {
      const keep = keyer.mask;
      keyer.setMask(this.history.get(seq));
      keyer.draw(video, video.videoWidth, video.videoHeight);
      keyer.setMask(keep);
    }
    return keyer.drawnMask ? keyer.drawnMask.seq : null;
  },
  resume() {
    paused = false;
  },
};

function say(text) {
  // OBS shows the page as is: keep messages small, and only while something is wrong.
  messageEl.textContent = text || "";
  messageEl.hidden = !text;
  messageEl.dataset.kind = text ? "error" : "";
}

setInterval(() => {
  stats.fps = +frameRate.value().toFixed(1);
  stats.maskFps = +maskRate.value().toFixed(1);
}, 500);

function drawFrame() {
  if (!paused && video.videoWidth) {
    const t0 = performance.now();
    keyer.draw(video, video.videoWidth, video.videoHeight);
    lastFrameAt = performance.now();
    // Main-thread time per keyed frame (ms, moving average); the GPU/raster work comes later.
    stats.drawMs = +(0.9 * (stats.drawMs ?? 0) + 0.1 * (performance.now() - t0)).toFixed(2);
    stats.frames++;
    frameRate.tick();
  }
  if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(drawFrame);
  else requestAnimationFrame(drawFrame);
}

async function connect() {
  clearTimeout(retryTimer);
  const mine = { pc: null, location: null, closed: false, lastSeq: null, lastMsg: performance.now(), timer: null };
  conn = mine;
  const pc = new RTCPeerConnection();
  mine.pc = pc;
  pc.addTransceiver("video", { direction: "recvonly" });
  const dc = pc.createDataChannel("greencam", { ordered: false, maxRetransmits: 0 });
  dc.binaryType = "arraybuffer";
  pc.ontrack = (ev) => {
    video.srcObject = ev.streams[0] || new MediaStream([ev.track]);
    video.play().catch(() => {});
  };
  dc.onopen = () => {
    mine.lastMsg = performance.now();
    mine.timer = setInterval(() => {
      // The server closes viewers that stay silent: say we are still here.
      if (dc.readyState === "open") dc.send(JSON.stringify({ type: "ping", t: performance.now() }));
      // Neither a mask nor a video frame for a while: the server (or its camera) is gone.
      const last = Math.max(mine.lastMsg, lastFrameAt);
      if (performance.now() - last > SILENT_MS) lost(mine, "no masks or video from the server");
    }, 2000);
  };
  dc.onclose = () => lost(mine, "data channel closed");
  dc.onmessage = async (ev) => {
    if (conn !== mine) return;
    mine.lastMsg = performance.now();
    if (typeof ev.data === "string") {
      try {
        const msg = JSON.parse(ev.data);
        if (msg.type === "state" && msg.state) stats.state = msg.state;
        if (msg.type === "error") say(`Server: ${msg.message}`);
      } catch {}
      return;
    }
    let mask;
    try {
      mask = await decodeMask(ev.data);
    } catch {
      return;
    }
    if (conn !== mine) return;
    stats.masks++;
    maskRate.tick();
    if (window.greencam.history) {
      window.greencam.history.set(mask.seq, mask);
      if (window.greencam.history.size > 64) window.greencam.history.delete(window.greencam.history.keys().next().value);
    }
    if (mine.lastSeq !== null && !seqNewer(mask.seq, mine.lastSeq)) return;
    mine.lastSeq = mask.seq;
    keyer.setMask(mask.state === "waiting" ? null : mask);
    stats.state = mask.state;
    say("");
  };
  pc.onconnectionstatechange = () => {
    if (pc.connectionState === "failed" || pc.connectionState === "closed") lost(mine, pc.connectionState);
  };
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await iceGathered(pc);
    if (conn !== mine) return;
    const res = await postOffer(`/whep/${encodeURIComponent(session)}`, token, pc.localDescription.sdp);
    mine.location = res.location;
    waitMs = 2500;
    await pc.setRemoteDescription({ type: "answer", sdp: res.answer });
  } catch (err) {
    if (conn !== mine) return;
    close(mine);
    if (err instanceof SignalError && err.status === 401) {
      stats.state = "error";
      say("greencam: the viewer token was refused (401). Copy the viewer link again from the capture page.");
      return;
    }
    if (err instanceof SignalError && err.status === 404) {
      stats.state = "reconnecting";
      say("greencam: waiting for the capture page (no live session on this link yet)…");
      retryTimer = setTimeout(connect, waitMs);
      waitMs = Math.min(15000, waitMs + 2500); // do not fill the server's log while nobody publishes
      return;
    }
    stats.state = "reconnecting";
    say(`greencam: ${err.message}; retrying…`);
    retryTimer = setTimeout(connect, 2000);
  }
}

function close(mine) {
  mine.closed = true;
  clearInterval(mine.timer);
  try {
    mine.pc.close();
  } catch {}
  if (mine.location) {
    fetch(mine.location, { method: "DELETE", headers: { Authorization: `Bearer ${token}` }, keepalive: true }).catch(
      () => {},
    );
  }
}

function lost(mine, why) {
  if (conn !== mine || mine.closed) return;
  close(mine);
  stats.state = "reconnecting";
  say(`greencam: connection lost (${why}); reconnecting…`);
  retryTimer = setTimeout(connect, 2000);
}

window.addEventListener("pagehide", () => conn && close(conn));
if (!session || !token) {
  stats.state = "error";
  say("greencam: open this page with the viewer link the capture page shows (/view/<session>?token=…).");
} else {
  if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(drawFrame);
  else requestAnimationFrame(drawFrame);
  connect();
}
