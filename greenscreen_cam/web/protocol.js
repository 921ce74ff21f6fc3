// Wire format shared with greencam serve (greenscreen_cam/link/protocol.py).
//
// Binary mask message, server -> browser, big-endian:
//   0-3   magic "GCM1"
//   4-7   uint32 frame tag (RTP timestamp of the frame the mask belongs to)
//   8-11  uint32 mask sequence number
//   12-13 uint16 width      14-15 uint16 height
//   16    uint8 state (0 tracking, 1 lost, 2 waiting for a prompt)
//   17    uint8 encoding (1 = 8-bit probability 0..255, row-major, zlib;
//                            2 = one such plane per subject, plane after plane, zlib)
//   18-19 uint16 planes (encoding 2; 2..MAX_SUBJECTS)   20-23 float32 object score
//   24..  payload

export const KEY_COLOR = [0, 175, 57];
export const STATES = ["tracking", "lost", "waiting"];
export const MAX_SUBJECTS = 8; // greenscreen_cam/track/multi.py: the server refuses one more
const HEADER = 24;
const MAGIC = 0x47434d31; // "GCM1"

/**
 * Parse and decompress one mask message.
 * @param {ArrayBuffer} buffer the data channel message
 * @returns {Promise<{tag:number, seq:number, width:number, height:number, state:string,
 *   score:number, data:Uint8Array, planes:Uint8Array[]}>} planes: one width*height plane of
 *   probabilities 0..255 (row-major) per subject, in the order they were selected; data: the
 *   first plane, or their per-pixel maximum for a quick look (the keyer upsamples each plane
 *   before they meet, as the official predictor does)
 */
export async function decodeMask(buffer) {
  if (buffer.byteLength < HEADER) throw new Error(`mask message too short (${buffer.byteLength} bytes)`);
  const view = new DataView(buffer);
  if (view.getUint32(0) !== MAGIC) throw new Error("not a greencam mask message");
  const width = view.getUint16(12);
  const height = view.getUint16(14);
  const encoding = view.getUint8(17);
  if (encoding !== 1 && encoding !== 2) throw new Error(`unknown mask encoding ${encoding}`);
  const count = encoding === 2 ? view.getUint16(18) : 1;
  if (encoding === 2 && (count < 2 || count > MAX_SUBJECTS)) throw new Error(`a mask of ${count} planes`);
  const payload = new Uint8Array(buffer, HEADER);
  const stream = new Blob([payload]).stream().pipeThrough(new DecompressionStream("deflate"));
  const raw = new Uint8Array(await new Response(stream).arrayBuffer());
  const size = width * height;
  if (raw.length !== count * size) throw new Error(`mask payload has ${raw.length} values, expected ${count * size}`);
  const planes = Array.from({ length: count }, (_, i) => raw.subarray(i * size, (i + 1) * size));
  let data = planes[0];
  if (count > 1) {
    data = new Uint8Array(size);
    for (const plane of planes) for (let i = 0; i < size; i++) if (plane[i] > data[i]) data[i] = plane[i];
  }
  return {
    tag: view.getUint32(4),
    seq: view.getUint32(8),
    width,
    height,
    state: STATES[view.getUint8(16)] ?? "tracking",
    score: view.getFloat32(20),
    data,
    planes,
  };
}

/**
 * The text message that selects one subject (greenscreen_cam/link/protocol.py prompt_message).
 * @param {{box: number[]|null, points: number[][]}} subject a box [x, y, w, h] or points, camera pixels
 * @param {number} width  the camera frame's width
 * @param {number} height its height
 * @param {boolean} add   keep the subjects already tracked ("add": true); otherwise replace them all
 * @returns {string}
 */
export function promptMessage(subject, width, height, add = false) {
  const msg = {
    type: "prompt",
    box: subject.box,
    points: subject.points,
    labels: subject.points.map(() => 1),
    width,
    height,
  };
  if (add) msg.add = true;
  return JSON.stringify(msg);
}

/**
 * The text message that stops tracking subject ``n`` (1-based, in the order they were selected);
 * the others keep tracking (greenscreen_cam/link/protocol.py drop_message).
 * @param {number} n
 * @returns {string}
 */
export function dropMessage(n) {
  return JSON.stringify({ type: "prompt", drop: n });
}

/** Newer-than for 32-bit wrapping sequence numbers. */
export function seqNewer(a, b) {
  return ((a - b) >>> 0) !== 0 && ((a - b) >>> 0) < 0x80000000;
}

/** Wait until an RTCPeerConnection has gathered all its ICE candidates (aiortc does not trickle). */
export function iceGathered(pc, timeoutMs = 5000) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    const check = () => {
      if (pc.iceGatheringState === "complete") done();
    };
    // Bounded: post whatever was gathered after timeoutMs rather than hang.
    const timer = setTimeout(done, timeoutMs);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

/** An error with the HTTP status of a failed signalling request. */
export class SignalError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/**
 * POST an SDP offer (WHIP / WHEP shaped) and return {answer, location}.
 * @param {string} url  e.g. "/whip"
 * @param {string} token bearer token
 * @param {string} sdp  the offer, ICE already gathered
 */
export async function postOffer(url, token, sdp, timeoutMs = 15000) {
  const ctrl = new AbortController();
  const timer = setTimeout(() => ctrl.abort(), timeoutMs);
  let resp;
  try {
    resp = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/sdp", Authorization: `Bearer ${token}` },
      body: sdp,
      signal: ctrl.signal,
    });
  } catch (err) {
    throw new SignalError(0, `server not reachable (${err.name === "AbortError" ? "timed out" : err.message})`);
  } finally {
    clearTimeout(timer);
  }
  const text = await resp.text();
  if (resp.status !== 201 && resp.status !== 200) throw new SignalError(resp.status, text.trim() || resp.statusText);
  return { answer: text, location: resp.headers.get("Location") };
}

/** Rolling rate (events per second over the last windowMs). */
export class Rate {
  constructor(windowMs = 2000) {
    this.windowMs = windowMs;
    this.times = [];
  }
  tick(now = performance.now()) {
    this.times.push(now);
    this.trim(now);
  }
  trim(now) {
    while (this.times.length && this.times[0] < now - this.windowMs) this.times.shift();
  }
  value(now = performance.now()) {
    this.trim(now);
    if (this.times.length < 2) return 0;
    return ((this.times.length - 1) * 1000) / Math.max(1, now - this.times[0]);
  }
}
