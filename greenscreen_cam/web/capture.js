// The capture page: camera -> greencam serve (WHIP) -> masks back -> keyed canvas.

import { Keyer } from "./keyer.js";
import {
  decodeMask,
  dropMessage,
  iceGathered,
  MAX_SUBJECTS,
  postOffer,
  promptMessage,
  Rate,
  seqNewer,
  SignalError,
} from "./protocol.js";

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const ui = {
  video: $("camera"),
  canvas: $("output"),
  stage: $("stage"),
  band: $("band"),
  state: $("state"),
  message: $("message"),
  stats: $("stats"),
  tokenForm: $("token-form"),
  tokenInput: $("token"),
  background: $("background"),
  color: $("color"),
  reset: $("reset"),
  viewer: $("viewer"),
  viewerLink: $("viewer-link"),
  copy: $("copy"),
};

const debug = params.get("debug") === "1";
const keyer = new Keyer(ui.canvas, { background: params.get("background") || "key", debug });
const HEARTBEAT_MS = 1000;
const DEAD_AFTER_MS = 6000; // no pong for this long: the server is gone, reconnect
const MAX_SENT = 600; // frames whose send time is remembered for latency (about 20 s at 30 fps)

const stats = { frames: 0, masks: 0, maskFps: 0, latencyMs: null, rttMs: null, fps: 0, state: "connecting" };
const frameRate = new Rate();
const maskRate = new Rate(5000); // masks can be slow (a few per second on a CPU server)
const latencies = []; // recent capture->mask latencies (ms), newest last
const sentAt = new Map(); // RTP timestamp -> performance.now() when the encoder handed the frame on
const firstSent = []; // the first RTP timestamps of this connection (candidate origins, see sendTime)

let token = params.get("token") || "";
dropTokenFromAddressBar();
let subjects = subjectsFromUrl(); // each {box, points}; the first replaces, the others are added
let stream = null;
let conn = null; // the live connection (see connect())
let retryMs = 1000;
let retryTimer = null;
let paused = false;
let message = "";

/** Take ``token=`` out of the address bar (and so out of history, bookmarks and screen shares) once read. */
function dropTokenFromAddressBar() {
  if (!params.has("token")) return;
  const url = new URL(location.href);
  url.searchParams.delete("token");
  history.replaceState(history.state, "", url.pathname + url.search + url.hash);
}

window.greencam = {
  stats,
  latencies,
  keyer,
  session: null,
  history: debug ? new Map() : null, // seq -> mask (debug only, last 64)
  get lastMask() {
    return keyer.mask;
  },
  get drawnMask() {
    return keyer.drawnMask;
  },
  /** Freeze the canvas (tests); with seq, redraw the last frame with that mask from history. */
  pause(seq) {
    paused = true;
    if (seq !== undefined && this.history?.has(seq)) {
      const keep = keyer.mask;
      keyer.setMask(this.history.get(seq));
      keyer.draw(ui.video, ui.video.videoWidth, ui.video.videoHeight);
      keyer.setMask(keep);
    }
    return keyer.drawnMask ? keyer.drawnMask.seq : null;
  },
  resume() {
    paused = false;
  },
  /** Select one subject ({box, points}, camera pixels), or several (an array): replaces the selection. */
  setPrompt(p) {
    subjects = Array.isArray(p) ? p.slice(0, MAX_SUBJECTS) : p ? [p] : [];
    sendSelection();
  },
};

/** The subjects the address names: every ``bbox=x,y,w,h``, then every ``point=x,y`` (camera pixels). */
function subjectsFromUrl() {
  const nums = (s) => s.split(",").map((v) => Number(v.trim()));
  const boxes = params
    .getAll("bbox")
    .map(nums)
    .filter((b) => b.length === 4 && b.every(Number.isFinite) && b[2] > 0 && b[3] > 0)
    .map((box) => ({ box, points: [] }));
  const points = params
    .getAll("point")
    .map(nums)
    .filter((p) => p.length === 2 && p.every(Number.isFinite))
    .map((p) => ({ box: null, points: [p] }));
  return [...boxes, ...points].slice(0, MAX_SUBJECTS);
}

/** Keep the selection in the address bar (bookmarkable). */
function subjectsToUrl() {
  const url = new URL(location.href);
  url.searchParams.delete("bbox");
  url.searchParams.delete("point");
  for (const s of subjects) {
    if (s.box) url.searchParams.append("bbox", s.box.join(","));
    else url.searchParams.append("point", s.points[0].join(","));
  }
  history.replaceState(null, "", url);
}

function setState(state, text) {
  stats.state = state;
  ui.state.textContent = state;
  ui.state.dataset.state = state;
  if (text !== undefined) setMessage(text);
}

function setMessage(text, kind = "info") {
  message = text || "";
  ui.message.textContent = message;
  ui.message.dataset.kind = kind;
  ui.message.hidden = !message;
}

function updateStats() {
  const now = performance.now();
  stats.fps = +frameRate.value(now).toFixed(1);
  stats.maskFps = +maskRate.value(now).toFixed(1);
  if (latencies.length) {
    const recent = latencies.slice(-30).sort((a, b) => a - b);
    stats.latencyMs = Math.round(recent[recent.length >> 1]);
  }
  const lat = stats.latencyMs === null ? "–" : `${stats.latencyMs} ms`;
  const rtt = stats.rttMs === null ? "–" : `${stats.rttMs} ms`;
  ui.stats.textContent = `${stats.fps} fps · ${stats.maskFps} masks/s · latency ${lat} · rtt ${rtt}`;
}
setInterval(updateStats, 500);

// ---- drawing: one keyed frame per camera frame --------------------------------------------
function drawFrame() {
  if (!paused && ui.video.videoWidth) {
    const t0 = performance.now();
    keyer.draw(ui.video, ui.video.videoWidth, ui.video.videoHeight);
    // Main-thread time per keyed frame (ms, moving average); the GPU/raster work comes later.
    stats.drawMs = +(0.9 * (stats.drawMs ?? 0) + 0.1 * (performance.now() - t0)).toFixed(2);
    stats.frames++;
    frameRate.tick();
  }
  schedule();
}
function schedule() {
  if (ui.video.requestVideoFrameCallback) ui.video.requestVideoFrameCallback(drawFrame);
  else requestAnimationFrame(drawFrame);
}

// ---- selecting the subject ----------------------------------------------------------------
function toCamera(ev) {
  const r = ui.canvas.getBoundingClientRect();
  const x = ((ev.clientX - r.left) / r.width) * ui.canvas.width;
  const y = ((ev.clientY - r.top) / r.height) * ui.canvas.height;
  return [Math.max(0, Math.min(ui.canvas.width - 1, x)), Math.max(0, Math.min(ui.canvas.height - 1, y))];
}

let drag = null;
ui.canvas.addEventListener("pointerdown", (ev) => {
  if (!ui.canvas.width) return;
  drag = { start: toCamera(ev), css: [ev.clientX, ev.clientY], add: ev.shiftKey };
  ui.canvas.setPointerCapture(ev.pointerId);
});
ui.canvas.addEventListener("pointermove", (ev) => {
  if (!drag) return;
  const s = ui.stage.getBoundingClientRect();
  const [x0, y0] = drag.css;
  Object.assign(ui.band.style, {
    left: `${Math.min(x0, ev.clientX) - s.left}px`,
    top: `${Math.min(y0, ev.clientY) - s.top}px`,
    width: `${Math.abs(ev.clientX - x0)}px`,
    height: `${Math.abs(ev.clientY - y0)}px`,
  });
  ui.band.hidden = false;
});
ui.canvas.addEventListener("pointerup", (ev) => {
  if (!drag) return;
  const [x0, y0] = drag.start;
  const [x1, y1] = toCamera(ev);
  const moved = Math.hypot(ev.clientX - drag.css[0], ev.clientY - drag.css[1]);
  const add = (drag.add || ev.shiftKey) && subjects.length > 0; // shift+drag (or click) adds a subject
  drag = null;
  ui.band.hidden = true;
  const r = (v) => Math.round(v);
  const subject =
    moved < 6
      ? { box: null, points: [[r(x1), r(y1)]] }
      : { box: [r(Math.min(x0, x1)), r(Math.min(y0, y1)), r(Math.abs(x1 - x0)), r(Math.abs(y1 - y0))], points: [] };
  if (!add) {
    subjects = [subject];
    subjectsToUrl();
    sendSelection();
  } else if (subjects.length >= MAX_SUBJECTS) {
    setMessage(`At most ${MAX_SUBJECTS} subjects: drag without Shift to start again.`, "error");
  } else {
    subjects.push(subject);
    subjectsToUrl();
    sendSubject(subject, true);
  }
});

// D drops the subject under the pointer (the preview window's d); the others keep tracking.
let pointer = null; // the pointer's last position over the canvas, camera pixels
ui.canvas.addEventListener("pointermove", (ev) => {
  if (ui.canvas.width) pointer = toCamera(ev);
});
ui.canvas.addEventListener("pointerleave", () => {
  pointer = null;
});
document.addEventListener("keydown", (ev) => {
  if (ev.key.toLowerCase() !== "d" || ev.ctrlKey || ev.metaKey || ev.altKey || ev.target.closest?.("input, select, textarea")) return;
  if (!pointer || !subjects.length) return;
  const index = keyer.subjectAt(pointer[0], pointer[1], ui.canvas.width, ui.canvas.height);
  if (index < 0 || index >= subjects.length) {
    setMessage("No subject under the pointer to drop: point at one and press D.");
    return;
  }
  subjects.splice(index, 1);
  subjectsToUrl();
  if (conn?.dc?.readyState === "open") conn.dc.send(dropMessage(index + 1));
  if (!subjects.length) {
    keyer.setMask(null);
    showWaitingHint();
  }
});

/** Send one subject: it replaces the selection, or with ``add`` joins the subjects already tracked. */
function sendSubject(subject, add) {
  if (!conn || !conn.dc || conn.dc.readyState !== "open" || !ui.video.videoWidth) return;
  conn.dc.send(promptMessage(subject, ui.video.videoWidth, ui.video.videoHeight, add));
}

/** Send the whole selection: the first subject replaces whatever the server tracks, the others are added. */
function sendSelection() {
  if (!subjects.length) {
    showWaitingHint();
    return;
  }
  subjects.forEach((s, i) => sendSubject(s, i > 0));
}

function showWaitingHint() {
  setMessage("No subject selected yet: drag a box around yourself or click on yourself (Shift adds another subject).");
}

ui.reset.addEventListener("click", () => {
  subjects = [];
  keyer.setMask(null);
  subjectsToUrl();
  if (conn?.dc?.readyState === "open") conn.dc.send(JSON.stringify({ type: "reset" }));
  showWaitingHint();
});

// ---- background choice --------------------------------------------------------------------
const initialBg = (params.get("background") || "key").toLowerCase();
ui.background.value = ["key", "transparent", "blur"].includes(initialBg) ? initialBg : "color";
if (ui.background.value === "color") ui.color.value = /^#?[0-9a-f]{6}$/.test(initialBg) ? `#${initialBg.replace("#", "")}` : "#0000ff";
ui.color.hidden = ui.background.value !== "color";
function applyBackground() {
  ui.color.hidden = ui.background.value !== "color";
  keyer.setBackground(ui.background.value === "color" ? ui.color.value : ui.background.value);
  ui.stage.dataset.transparent = String(ui.background.value === "transparent");
}
ui.background.addEventListener("change", applyBackground);
ui.color.addEventListener("input", applyBackground);
applyBackground();

// ---- the connection -----------------------------------------------------------------------
function noteSent(ts, at) {
  sentAt.set(ts >>> 0, at);
  if (firstSent.length < 30) firstSent.push(ts >>> 0);
  if (sentAt.size > MAX_SENT) sentAt.delete(sentAt.keys().next().value);
}

let latencyWorker = null;

/**
 * How this browser can see its encoded frames' RTP timestamps (the masks' frame tags):
 * "script" (RTCRtpScriptTransform: Chrome, Firefox, Safari), "streams" (Chrome's older
 * createEncodedStreams), or null (no latency figure, RTT only). ?latency=0 turns it off.
 */
function frameTap() {
  if (params.get("latency") === "0") return null;
  if (typeof RTCRtpScriptTransform !== "undefined" && typeof Worker !== "undefined") return "script";
  if (typeof RTCRtpSender !== "undefined" && "createEncodedStreams" in RTCRtpSender.prototype) return "streams";
  return null;
}

/** Remember when each encoded frame left, keyed by its RTP timestamp (the mask's frame tag). */
function watchSender(sender, tap) {
  if (tap === "script") {
    if (!latencyWorker) {
      latencyWorker = new Worker("/web/latency-worker.js");
      latencyWorker.onmessage = (ev) => noteSent(ev.data.ts, ev.data.at - performance.timeOrigin);
    }
    sender.transform = new RTCRtpScriptTransform(latencyWorker, { side: "send" });
    return;
  }
  const { readable, writable } = sender.createEncodedStreams();
  const tapStream = new TransformStream({
    transform(frame, controller) {
      const meta = frame.getMetadata ? frame.getMetadata() : {};
      noteSent(meta.rtpTimestamp ?? frame.timestamp, performance.now());
      controller.enqueue(frame);
    },
  });
  readable.pipeThrough(tapStream).pipeTo(writable).catch(() => {});
}

async function connect() {
  clearTimeout(retryTimer);
  const mine = { pc: null, dc: null, location: null, lastPong: performance.now(), closed: false, timer: null, lastSeq: null };
  conn = mine;
  const tap = frameTap();
  sentAt.clear();
  firstSent.length = 0;
  const pc = new RTCPeerConnection(tap === "streams" ? { encodedInsertableStreams: true } : {});
  mine.pc = pc;
  const track = stream.getVideoTracks()[0];
  const s = track.getSettings();
  const longSide = Math.max(s.width || 0, s.height || 0);
  const upload = Number(params.get("upload") || 640);
  const scale = upload > 0 && longSide > upload ? longSide / upload : 1;
  const tx = pc.addTransceiver(track, {
    direction: "sendonly",
    streams: [stream],
    sendEncodings: [{ scaleResolutionDownBy: scale, maxBitrate: 1_500_000 }],
  });
  if (tap) watchSender(tx.sender, tap);
  const dc = pc.createDataChannel("greencam", { ordered: false, maxRetransmits: 0 });
  dc.binaryType = "arraybuffer";
  mine.dc = dc;
  dc.onopen = () => {
    if (conn !== mine) return;
    retryMs = 1000;
    mine.lastPong = performance.now();
    if (subjects.length) sendSelection();
    else {
      setState("waiting");
      showWaitingHint();
    }
    mine.timer = setInterval(() => heartbeat(mine), HEARTBEAT_MS);
  };
  dc.onclose = () => lost(mine, "the data channel closed");
  dc.onmessage = (ev) => onMessage(mine, ev.data);
  pc.onconnectionstatechange = () => {
    if (pc.connectionState === "failed" || pc.connectionState === "closed") lost(mine, `connection ${pc.connectionState}`);
  };
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await iceGathered(pc);
    if (conn !== mine) return;
    const { answer, location: loc } = await postOffer("/whip", token, pc.localDescription.sdp);
    mine.location = loc;
    if (conn !== mine) return;
    await pc.setRemoteDescription({ type: "answer", sdp: answer });
  } catch (err) {
    failed(mine, err);
  }
}

/**
 * When the frame a mask belongs to left this browser (performance.now() ms), or undefined.
 *
 * The mask's tag is the frame's RTP timestamp as the server saw it. aiortc (and so greencam
 * serve) counts it from the first frame it decoded, so the tag is usually the RTP timestamp
 * minus an origin: one of the first timestamps this browser sent. The origin is found by
 * trying those until three masks in a row land on a sent frame.
 */
function sendTime(mine, tag) {
  const direct = sentAt.get(tag >>> 0);
  if (direct !== undefined && mine.origin === undefined) return direct;
  if (mine.origin !== undefined && mine.origin !== null) return sentAt.get((tag + mine.origin) >>> 0);
  mine.candidates ??= new Map();
  for (const origin of firstSent) {
    if (sentAt.has((tag + origin) >>> 0)) {
      const hits = (mine.candidates.get(origin) || 0) + 1;
      mine.candidates.set(origin, hits);
      if (hits >= 3) {
        mine.origin = origin;
        return sentAt.get((tag + origin) >>> 0);
      }
    }
  }
  return undefined;
}

function heartbeat(mine) {
  if (conn !== mine) return;
  if (performance.now() - mine.lastPong > DEAD_AFTER_MS) {
    lost(mine, "the server stopped answering");
    return;
  }
  if (mine.dc.readyState === "open") mine.dc.send(JSON.stringify({ type: "ping", t: performance.now() }));
}

function showViewerLink(path) {
  const url = `${location.origin}${path}`;
  ui.viewerLink.href = url;
  ui.viewerLink.textContent = url;
  ui.viewer.hidden = false;
}

function randomPart(bytes) {
  const b = crypto.getRandomValues(new Uint8Array(bytes));
  return btoa(String.fromCharCode(...b)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** This browser's stable viewer link {name, secret}, kept in localStorage when it can be. */
function viewerKey() {
  const KEY = "greencam.viewer-link";
  try {
    const saved = JSON.parse(localStorage.getItem(KEY) || "null");
    if (saved && /^[\w-]{12,64}$/.test(saved.name) && /^[\w-]{12,64}$/.test(saved.secret)) return saved;
  } catch {}
  const fresh = { name: randomPart(12), secret: randomPart(18) };
  try {
    localStorage.setItem(KEY, JSON.stringify(fresh));
  } catch {}
  return fresh;
}
const stableLink = viewerKey();

/**
 * Point the stable viewer link at this session, so the URL pasted into OBS survives reconnects
 * and server restarts. On failure the page keeps showing the session's own viewer link.
 */
async function bindViewerLink(mine, sessionId) {
  try {
    const resp = await fetch("/web/viewer-link", {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
      body: JSON.stringify({ session: sessionId, name: stableLink.name, secret: stableLink.secret }),
    });
    if (!resp.ok || conn !== mine) return;
    const { path } = await resp.json();
    window.greencam.viewerLink = `${location.origin}${path}?token=${stableLink.secret}`;
    showViewerLink(`${path}?token=${stableLink.secret}`);
  } catch {}
}

async function onMessage(mine, data) {
  if (conn !== mine) return;
  if (typeof data === "string") {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    mine.lastPong = performance.now(); // any message proves the server is alive
    if (msg.type === "pong") {
      stats.rttMs = Math.round(performance.now() - msg.t);
    } else if (msg.type === "session") {
      window.greencam.session = { id: msg.id, viewerToken: msg.viewer_token };
      showViewerLink(`/view/${encodeURIComponent(msg.id)}?token=${encodeURIComponent(msg.viewer_token)}`);
      bindViewerLink(mine, msg.id);
    } else if (msg.type === "state") {
      if (msg.state === "waiting" && !subjects.length) {
        setState("waiting");
        showWaitingHint();
      } else if (msg.state === "lost" || msg.state === "tracking") {
        setState(msg.state);
      }
    } else if (msg.type === "error") {
      setMessage(`Server: ${msg.message}`, "error");
    }
    return;
  }
  let mask;
  try {
    mask = await decodeMask(data);
  } catch (err) {
    setMessage(`Bad mask from the server: ${err.message}`, "error");
    return;
  }
  if (conn !== mine) return;
  mine.lastPong = performance.now();
  stats.masks++;
  maskRate.tick();
  const t0 = sendTime(mine, mask.tag);
  if (t0 !== undefined) {
    latencies.push(performance.now() - t0);
    if (latencies.length > 2000) latencies.splice(0, latencies.length - 2000);
  }
  if (window.greencam.history) {
    window.greencam.history.set(mask.seq, mask);
    if (window.greencam.history.size > 64) window.greencam.history.delete(window.greencam.history.keys().next().value);
  }
  if (mine.lastSeq !== null && !seqNewer(mask.seq, mine.lastSeq)) return; // an older mask arriving late
  mine.lastSeq = mask.seq;
  if (mask.state === "waiting") {
    keyer.setMask(null);
    setState("waiting");
    if (!subjects.length) showWaitingHint();
    else sendSelection();
    return;
  }
  const tm = performance.now();
  keyer.setMask(mask);
  stats.maskMs = +(performance.now() - tm).toFixed(2); // upsampling the newest mask (ms)
  if (stats.state !== mask.state) {
    setState(mask.state);
    if (message && ui.message.dataset.kind !== "error") setMessage("");
  }
}

function teardown(mine) {
  mine.closed = true;
  clearInterval(mine.timer);
  try {
    mine.pc?.close();
  } catch {}
  if (mine.location) {
    fetch(mine.location, { method: "DELETE", headers: { Authorization: `Bearer ${token}` }, keepalive: true }).catch(
      () => {},
    );
  }
}

function lost(mine, why) {
  if (conn !== mine || mine.closed) return;
  teardown(mine);
  setState("reconnecting", `Connection lost (${why}); reconnecting…`);
  retry();
}

function failed(mine, err) {
  if (conn !== mine || mine.closed) return;
  teardown(mine);
  if (err instanceof SignalError && err.status === 401) {
    setState("error");
    setMessage(`The server refused the token (401 Unauthorized). Enter the token greencam serve printed.`, "error");
    ui.tokenForm.hidden = false;
    ui.tokenInput.focus();
    conn = null;
    return;
  }
  let text;
  if (err instanceof SignalError && err.status === 503) text = `Server busy (503): ${err.message}`;
  else if (err instanceof SignalError && err.status) text = `Server answered ${err.status}: ${err.message}`;
  else text = `Cannot reach greencam serve: ${err.message}`;
  setState("reconnecting", `${text}; retrying…`);
  retry(err instanceof SignalError && err.status === 503 ? 5000 : undefined);
}

function retry(delay) {
  clearTimeout(retryTimer);
  const wait = delay ?? retryMs;
  retryMs = Math.min(5000, retryMs * 2);
  retryTimer = setTimeout(connect, wait);
}

// ---- start --------------------------------------------------------------------------------
async function start() {
  if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
    setState("error");
    setMessage(
      `Camera access needs a secure page: this one was opened from ${location.origin}, which is neither https ` +
        `nor localhost. Start greencam serve with --cert-file/--key-file and open https://…, or tunnel the port ` +
        `(ssh -L ${location.port || 8470}:127.0.0.1:${location.port || 8470} HOST) and open http://localhost:${location.port || 8470}/.`,
      "error",
    );
    return;
  }
  if (!token) {
    setState("error");
    setMessage("Enter the token that greencam serve printed (or add ?token=… to the address).", "error");
    ui.tokenForm.hidden = false;
    return;
  }
  ui.tokenForm.hidden = true;
  setState("connecting", "Opening the camera…");
  if (!stream) {
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } },
        audio: false,
      });
    } catch (err) {
      setState("error");
      setMessage(`No camera: ${err.name}: ${err.message}. Allow camera access for this page and reload.`, "error");
      return;
    }
    ui.video.srcObject = stream;
    await ui.video.play().catch(() => {});
    schedule();
  }
  setState("connecting", "Connecting to greencam serve…");
  connect();
}

ui.tokenForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = ui.tokenInput.value.trim();
  if (token) start();
});
ui.copy.addEventListener("click", () => navigator.clipboard?.writeText(ui.viewerLink.href).catch(() => {}));
window.addEventListener("pagehide", () => {
  if (conn) teardown(conn);
});

start();
