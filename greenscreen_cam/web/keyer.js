// Keys video frames with greencam masks on a 2D canvas.
//
// The mask (the tracker's probabilities, a square covering the whole frame, e.g. 64x64 at
// 256 px) is upsampled bilinearly, goes through a steep smooth step at p = 0.5 and becomes the
// alpha channel that cuts the subject out of the frame ("destination-in"); the background goes
// behind it ("destination-over"): the key colour RGB(0,175,57), another colour, nothing
// (transparent) or a blurred copy of the frame.

import { KEY_COLOR } from "./protocol.js";

// Like greencam's compositor, the subject is where the upsampled probability is above 0.5;
// a very narrow step (LOW..HIGH out of 255) softens it; the anti-aliasing comes from the
// bilinear upsampling of the thresholded alpha to the frame. At or below LOW the
// pixel is background (alpha 0: exactly the key colour), at or above HIGH subject (alpha 1:
// exactly the camera pixel).
export const ALPHA_LOW = 126;
export const ALPHA_HIGH = 129;

const ALPHA_LUT = (() => {
  const lut = new Uint8ClampedArray(256);
  for (let p = 0; p < 256; p++) {
    const t = Math.min(1, Math.max(0, (p - ALPHA_LOW) / (ALPHA_HIGH - ALPHA_LOW)));
    lut[p] = Math.round(255 * t * t * (3 - 2 * t));
  }
  return lut;
})();

/** Parse "key", "transparent", "blur", "#rrggbb" or "r,g,b" into {mode, color}. */
export function parseBackground(text) {
  const t = (text || "key").trim().toLowerCase();
  if (t === "key" || t === "green") return { mode: "color", color: KEY_COLOR.slice() };
  if (t === "transparent" || t === "none") return { mode: "transparent", color: null };
  if (t === "blur") return { mode: "blur", color: null };
  let m = /^#?([0-9a-f]{6})$/.exec(t);
  if (m) {
    const n = parseInt(m[1], 16);
    return { mode: "color", color: [(n >> 16) & 255, (n >> 8) & 255, n & 255] };
  }
  m = /^(\d{1,3}),(\d{1,3}),(\d{1,3})$/.exec(t);
  if (m) return { mode: "color", color: [+m[1], +m[2], +m[3]].map((v) => Math.min(255, v)) };
  return { mode: "color", color: KEY_COLOR.slice() };
}

export class Keyer {
  /**
   * @param {HTMLCanvasElement} canvas the visible output
   * @param {{background?: string, blurPx?: number, debug?: boolean}} options
   *   debug keeps a copy of the last raw frame (for tests: rawCanvas)
   */
  constructor(canvas, options = {}) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d", { alpha: true });
    this.alpha = document.createElement("canvas");
    this.alphaCtx = this.alpha.getContext("2d");
    this.mask = null; // the mask message whose alpha is in this.alpha
    this.layout = null; // "alpha size/mask size" the alpha buffers and taps were made for
    this.drawnMask = null; // the mask used for the frame now on the canvas
    this.blurPx = options.blurPx ?? 16;
    this.debug = !!options.debug;
    this.rawCanvas = this.debug ? document.createElement("canvas") : null;
    this.setBackground(options.background || "key");
  }

  setBackground(text) {
    const bg = parseBackground(text);
    this.mode = bg.mode;
    this.color = bg.color;
  }

  /**
   * Use this mask (a decodeMask() result) from the next frame on; null = all background.
   *
   * The probabilities are upsampled bilinearly (pixel centres aligned, like OpenCV's
   * INTER_LINEAR) to an alpha image of up to 8x the mask size and at most the frame size,
   * and only then go through the step: the edge follows the interpolated p = 0.5 contour
   * and stays one or two pixels wide. The canvas upsamples the rest of the way. A mask of
   * several subjects (mask.planes) is upsampled plane by plane and the planes meet in their
   * per-pixel maximum after that, as the official predictor takes the union.
   */
  setMask(mask) {
    this.mask = mask;
    if (!mask) return;
    const fw = this.canvas.width || mask.width;
    const fh = this.canvas.height || mask.height;
    const aw = Math.max(mask.width, Math.min(fw, mask.width * 8));
    const ah = Math.max(mask.height, Math.min(fh, mask.height * 8));
    // Keyed on everything the buffers depend on: a mask that arrives before the first frame
    // sizes the canvas finds it at the browser's default 300x150, which may equal aw x ah.
    const layout = `${aw}x${ah}/${mask.width}x${mask.height}`;
    if (this.layout !== layout) {
      this.layout = layout;
      this.alpha.width = aw;
      this.alpha.height = ah;
      this.alphaImage = this.alphaCtx.createImageData(aw, ah);
      this.alphaImage.data.fill(255);
      this.xs = bilinearTaps(aw, mask.width);
      this.ys = bilinearTaps(ah, mask.height);
    }
    const px = this.alphaImage.data;
    const planes = mask.planes && mask.planes.length ? mask.planes : [mask.data];
    const mw = mask.width;
    const { i0: x0, i1: x1, f: fx } = this.xs;
    const { i0: y0, i1: y1, f: fy } = this.ys;
    let j = 3;
    for (let y = 0; y < ah; y++) {
      const r0 = y0[y] * mw;
      const r1 = y1[y] * mw;
      const wy = fy[y];
      for (let x = 0; x < aw; x++, j += 4) {
        const wx = fx[x];
        let best = 0;
        for (const src of planes) {
          const a = src[r0 + x0[x]];
          const b = src[r0 + x1[x]];
          const c = src[r1 + x0[x]];
          const d = src[r1 + x1[x]];
          const top = a + (b - a) * wx;
          const bottom = c + (d - c) * wx;
          const v = top + (bottom - top) * wy;
          if (v > best) best = v;
        }
        px[j] = ALPHA_LUT[(best + 0.5) | 0];
      }
    }
    this.alphaCtx.putImageData(this.alphaImage, 0, 0);
  }

  /**
   * The subject (0-based plane of the current mask) that covers frame pixel (x, y) most surely,
   * or -1 where none does (the probability is at most 0.5 in every plane).
   * @param {number} x frame pixels
   * @param {number} y
   * @param {number} width the frame's width
   * @param {number} height its height
   */
  subjectAt(x, y, width, height) {
    const mask = this.mask;
    if (!mask || !width || !height) return -1;
    const mx = Math.min(mask.width - 1, Math.max(0, Math.floor((x * mask.width) / width)));
    const my = Math.min(mask.height - 1, Math.max(0, Math.floor((y * mask.height) / height)));
    const planes = mask.planes && mask.planes.length ? mask.planes : [mask.data];
    let best = -1;
    let bestValue = 128; // above p = 0.5
    planes.forEach((plane, i) => {
      const v = plane[my * mask.width + mx];
      if (v >= bestValue) {
        best = i;
        bestValue = v + 1;
      }
    });
    return best;
  }

  /**
   * Draw one keyed frame.
   * @param {CanvasImageSource} source the video element (or any image)
   * @param {number} width frame width in pixels
   * @param {number} height frame height in pixels
   */
  draw(source, width, height) {
    if (!width || !height) return;
    for (const c of [this.canvas, this.rawCanvas]) {
      if (c && (c.width !== width || c.height !== height)) {
        c.width = width;
        c.height = height;
      }
    }
    if (this.rawCanvas) {
      const r = this.rawCanvas.getContext("2d");
      r.globalCompositeOperation = "copy";
      r.drawImage(source, 0, 0, width, height);
    }
    const ctx = this.ctx;
    this.drawnMask = this.mask;
    // One canvas, three operations: the frame, cut by the alpha, then the background behind it.
    if (this.mask) {
      ctx.globalCompositeOperation = "copy";
      ctx.drawImage(source, 0, 0, width, height);
      ctx.globalCompositeOperation = "destination-in";
      ctx.imageSmoothingEnabled = true;
      ctx.imageSmoothingQuality = "low"; // bilinear: "high" is a costly filter on software canvases
      ctx.drawImage(this.alpha, 0, 0, width, height);
      ctx.globalCompositeOperation = "destination-over";
    } else {
      ctx.globalCompositeOperation = "copy"; // no subject yet: background only
    }
    if (this.mode === "color") {
      ctx.fillStyle = `rgb(${this.color[0]},${this.color[1]},${this.color[2]})`;
      ctx.fillRect(0, 0, width, height);
    } else if (this.mode === "blur") {
      ctx.filter = `blur(${this.blurPx}px)`;
      // Overscan so the blur does not fade to transparent at the borders.
      const m = this.blurPx * 2;
      ctx.drawImage(source, -m, -m, width + 2 * m, height + 2 * m);
      ctx.filter = "none";
    } else if (!this.mask) {
      ctx.clearRect(0, 0, width, height);
    }
    ctx.globalCompositeOperation = "source-over";
  }
}

/** Source indices and weights for resizing n source samples to size outputs (centres aligned). */
function bilinearTaps(size, n) {
  const i0 = new Int32Array(size);
  const i1 = new Int32Array(size);
  const f = new Float32Array(size);
  for (let o = 0; o < size; o++) {
    const s = Math.min(n - 1, Math.max(0, ((o + 0.5) * n) / size - 0.5));
    i0[o] = Math.floor(s);
    i1[o] = Math.min(n - 1, i0[o] + 1);
    f[o] = s - i0[o];
  }
  return { i0, i1, f };
}

export { ALPHA_LUT };
