// The thumbnail scatter: each point is a quad showing its own cell of a sprite sheet texture.
// One draw call per frame (WebGL2, else WebGL1) of two triangles per point: the quads' six corners are
// expanded once per data set, not instanced, because software GL (SwiftShader: headless Chromium, machines
// without a GPU) runs an instanced draw one instance at a time, about 20 µs each: 0.2 s a frame for 10,000.
// Frames are drawn in requestAnimationFrame only after something changed; the canvas counts them in data-frames.
// In software GL a frame's cost is its pixels (clearing, shading, and the compositor's read-back of the canvas),
// not its points: while the view pans or zooms there, frames are drawn at half the resolution (a quarter of the
// pixels, about twice the frame rate) and the full-resolution frame follows SETTLE_MS after the last motion.
// Streamlit components v1 protocol by hand (postMessage), so there is no library to fetch.
"use strict";
(function () {
  const MSG = { READY: "streamlit:componentReady", VALUE: "streamlit:setComponentValue", HEIGHT: "streamlit:setFrameHeight", RENDER: "streamlit:render" };
  const ZOOM_PER_WHEEL_PX = 0.0015;   // zoom factor = exp(-deltaY * this)
  const MIN_ZOOM = 0.25;
  const MAX_ZOOM = 4096;
  const MAX_NATIVE_SCALE = 4;         // a thumbnail grows with zoom up to 4x its sheet pixels,
  const FILL = 0.6;                   // but the thumbnails in view cover at most this x the plot's area:
                                      // side <= sqrt(FILL * area / points in view) (bounds the pixels per frame
                                      // and the overlap); at zoom 1 that is the side for all points
  const MIN_THUMB_PX = 4;
  const MIN_LEVEL_CELL = 4;           // the smallest cells of the reduced copies of the sheet
  const FIT_MARGIN = 0.04;            // fraction of the plot left empty around the points when fitted
  const CLICK_SLOP_PX = 4;            // a press that moves less than this is a click, not a pan
  const BORDER_PX = 1;                // the class-colour frame around each thumbnail
  const TINT_BELOW_PX = 16;           // thumbnails smaller than this are tinted with their class colour...
  const MAX_TINT = 0.6;               // ...up to this much at MIN_THUMB_PX
  const PICK_CELLS_PER_SIDE = 128;    // uniform picking grid, at most this many cells a side
  const TIP_TARGET_PX = 140;          // the hover image is an integer multiple of the cell, about this big
  const TIP_OFFSET_PX = 16;
  const SELECT_RING_PX = 3;
  const HOVER_RING_PX = 2;
  const MOTION_RES = 0.5;             // resolution of the frames drawn while panning or zooming in software GL
  const SETTLE_MS = 150;              // after the last pan or zoom input, the view is drawn at full resolution
  const SOFTWARE_GL = /swiftshader|llvmpipe|softpipe|software/i;   // renderers that rasterise on the CPU

  const canvas = document.getElementById("gl");
  const hoverBox = document.getElementById("hover-box");
  const selectBox = document.getElementById("select-box");
  const stage = document.getElementById("stage");
  const legend = document.getElementById("legend");
  const tip = document.getElementById("tip");
  const big = document.getElementById("big");
  const bctx = big.getContext("2d");
  const caption = document.getElementById("caption");
  const message = document.getElementById("message");

  const state = {
    gl: null, webgl2: false, prog: null, loc: null, buffers: null, levels: [], lost: false,
    sheetKey: null, bitmap: null, grid: null, textureReady: false,
    dataKey: null, n: 0, xy: null, labels: null, colors: [], names: [], rgb: null,
    selected: -1, thumbPx: 0, height: 0, size: 0, sizeView: "",
    cx: 0, cy: 0, fit: 1, zoom: 1,          // view: data centre, px per data unit at zoom 1, zoom
    width: 0, heightPx: 0, dpr: 1,          // CSS size of the drawing area and device pixel ratio
    res: 1, software: false, lastMotion: -Infinity, settleTimer: 0,   // drawing resolution (of dpr), motion
    pick: null, hover: -1, mouse: null, drag: null, clicks: 0,
    dirty: false, raf: 0, frames: 0, theme: null,
  };

  // ------------------------------------------------------------------ Streamlit protocol
  function send(type, data) {
    window.parent.postMessage(Object.assign({ isStreamlitMessage: true, type: type }, data || {}), "*");
  }
  function sendHeight() {
    send(MSG.HEIGHT, { height: Math.ceil(document.body.getBoundingClientRect().height) });
  }

  // ------------------------------------------------------------------ WebGL
  const VERT = `
    attribute vec2 a_corner;      // which corner of its quad: (0,0)..(1,1), y up
    attribute vec2 a_pos;         // the point's data coordinates (same for its six vertices)
    attribute vec2 a_uv;          // this corner of the point's cell in the sheet, as a fraction of the sheet:
                                  // the same at every texture level, since all keep the sheet's grid
    attribute vec4 a_color;       // the point's class colour
    uniform vec2 u_center;        // data coordinates at the middle of the canvas
    uniform float u_scale;        // device px per data unit
    uniform vec2 u_viewport;      // device px
    uniform float u_size;         // thumbnail side in device px
    varying vec2 v_uv;            // texture coordinates: the quad spans exactly its cell
    varying vec2 v_px;            // device px from the thumbnail's top-left corner
    varying vec3 v_color;
    void main() {
      v_uv = a_uv;
      v_px = vec2(a_corner.x, 1.0 - a_corner.y) * u_size;   // y down, like the image rows
      v_color = a_color.rgb;
      vec2 centre = (a_pos - u_center) * u_scale + 0.5 * u_viewport;
      // snapped to whole device pixels: fragment centres then never sample on a cell's edge (no bleeding)
      vec2 corner = floor(centre - 0.5 * u_size + 0.5) + a_corner * u_size;
      gl_Position = vec4(corner / u_viewport * 2.0 - 1.0, 0.0, 1.0);
    }`;
  const FRAG = `
    #ifdef GL_FRAGMENT_PRECISION_HIGH
    precision highp float;
    #else
    precision mediump float;
    #endif
    uniform sampler2D u_tex;
    uniform float u_size;
    uniform float u_border;       // device px
    uniform float u_tint;
    varying vec2 v_uv;
    varying vec2 v_px;
    varying vec3 v_color;
    void main() {
      vec3 rgb = mix(texture2D(u_tex, v_uv).rgb, v_color, u_tint);
      vec2 edge = min(v_px, u_size - v_px);
      if (min(edge.x, edge.y) < u_border) rgb = v_color;
      gl_FragColor = vec4(rgb, 1.0);
    }`;

  function compile(gl, type, source) {
    const sh = gl.createShader(type);
    gl.shaderSource(sh, source);
    gl.compileShader(sh);
    if (!gl.getShaderParameter(sh, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(sh) || "shader did not compile");
    return sh;
  }

  function initGL() {
    const options = { antialias: false, alpha: false, depth: false, stencil: false, preserveDrawingBuffer: false };
    let gl = canvas.getContext("webgl2", options);
    const webgl2 = !!gl;
    if (!gl) gl = canvas.getContext("webgl", options);
    if (!gl) throw new Error("this browser has no WebGL: the thumbnail scatter cannot be drawn");
    const prog = gl.createProgram();
    gl.attachShader(prog, compile(gl, gl.VERTEX_SHADER, VERT));
    gl.attachShader(prog, compile(gl, gl.FRAGMENT_SHADER, FRAG));
    gl.linkProgram(prog);
    if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(prog) || "program did not link");
    gl.useProgram(prog);
    const loc = {};
    for (const a of ["a_corner", "a_pos", "a_uv", "a_color"]) loc[a] = gl.getAttribLocation(prog, a);
    for (const u of ["u_center", "u_scale", "u_viewport", "u_size", "u_tex", "u_border", "u_tint"]) loc[u] = gl.getUniformLocation(prog, u);
    const buffers = { corner: gl.createBuffer(), pos: gl.createBuffer(), uv: gl.createBuffer(), color: gl.createBuffer() };
    // corner: 2 of 4 bytes used (attributes stay 4-byte aligned); colour: 4 normalised bytes
    const attributes = [["a_corner", buffers.corner, 2, gl.UNSIGNED_BYTE, false, 4], ["a_pos", buffers.pos, 2, gl.FLOAT, false, 0],
                        ["a_uv", buffers.uv, 2, gl.FLOAT, false, 0], ["a_color", buffers.color, 4, gl.UNSIGNED_BYTE, true, 0]];
    for (const [name, buf, size, type, norm, stride] of attributes) {
      gl.bindBuffer(gl.ARRAY_BUFFER, buf);
      gl.enableVertexAttribArray(loc[name]);
      gl.vertexAttribPointer(loc[name], size, type, norm, stride, 0);
    }
    gl.uniform1i(loc.u_tex, 0);
    gl.disable(gl.DEPTH_TEST);
    gl.disable(gl.BLEND);
    Object.assign(state, { gl: gl, webgl2: webgl2, prog: prog, loc: loc, buffers: buffers, levels: [], textureReady: false, lost: false });
    canvas.dataset.gl = webgl2 ? "webgl2" : "webgl1";
    const dbg = gl.getExtension("WEBGL_debug_renderer_info");
    canvas.dataset.renderer = String(dbg ? gl.getParameter(dbg.UNMASKED_RENDERER_WEBGL) : gl.getParameter(gl.RENDERER));
    state.software = SOFTWARE_GL.test(canvas.dataset.renderer);
  }

  const CORNERS = [[0, 0], [1, 0], [0, 1], [0, 1], [1, 0], [1, 1]];   // two triangles per quad
  const VERTICES = CORNERS.length;

  // The vertex buffers: every point's attributes repeated for its six corners (once per data set or palette).
  function uploadVertices() {
    const gl = state.gl;
    if (!gl || state.lost || !state.n) return;
    const n = state.n, m = n * VERTICES, cols = state.grid.cols, rows = state.grid.rows;
    const pos = new Float32Array(2 * m), uv = new Float32Array(2 * m), corner = new Uint8Array(4 * m), color = new Uint8Array(4 * m);
    for (let i = 0; i < n; i++) {
      const c = state.rgb[state.labels[i]] || [128, 128, 128];
      const row = Math.floor(i / cols), col = i - row * cols;
      for (let v = 0; v < VERTICES; v++) {
        const k = i * VERTICES + v;
        pos[2 * k] = state.xy[2 * i]; pos[2 * k + 1] = state.xy[2 * i + 1];
        uv[2 * k] = (col + CORNERS[v][0]) / cols; uv[2 * k + 1] = (row + 1 - CORNERS[v][1]) / rows;   // corner y is up, rows go down
        corner[4 * k] = CORNERS[v][0]; corner[4 * k + 1] = CORNERS[v][1];
        color[4 * k] = c[0]; color[4 * k + 1] = c[1]; color[4 * k + 2] = c[2]; color[4 * k + 3] = 255;
      }
    }
    for (const [buf, data] of [[state.buffers.pos, pos], [state.buffers.uv, uv], [state.buffers.corner, corner], [state.buffers.color, color]]) {
      gl.bindBuffer(gl.ARRAY_BUFFER, buf);
      gl.bufferData(gl.ARRAY_BUFFER, data, gl.STATIC_DRAW);
    }
  }

  function makeTexture(gl, source) {
    const tex = gl.createTexture();
    gl.activeTexture(gl.TEXTURE0);
    gl.bindTexture(gl.TEXTURE_2D, tex);
    gl.pixelStorei(gl.UNPACK_FLIP_Y_WEBGL, false);
    gl.pixelStorei(gl.UNPACK_PREMULTIPLY_ALPHA_WEBGL, false);
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA, gl.RGBA, gl.UNSIGNED_BYTE, source);
    for (const [p, v] of [[gl.TEXTURE_MIN_FILTER, gl.NEAREST], [gl.TEXTURE_MAG_FILTER, gl.NEAREST], [gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE], [gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE]]) {
      gl.texParameteri(gl.TEXTURE_2D, p, v);
    }
    return tex;
  }

  // The sheet as textures, once per sheet: level 0 the sheet itself (nearest-neighbour, for zoomed-in
  // thumbnails), then copies with cells of half the side (smoothed) down to MIN_LEVEL_CELL px. A small
  // thumbnail samples the level whose cells are just larger than it: its texels stay close together in
  // memory, which is what costs in software GL (a 10,000-point frame from 28 px cells: 3x slower).
  // Cells keep whole-pixel sides, so every level's cell k starts at a whole pixel too.
  function uploadTexture() {
    const gl = state.gl;
    if (!gl || state.lost || !state.bitmap) return;
    const max = gl.getParameter(gl.MAX_TEXTURE_SIZE);
    if (state.bitmap.width > max || state.bitmap.height > max) {
      showMessage(`the sprite sheet (${state.bitmap.width} x ${state.bitmap.height} px) is larger than this GPU's ${max} px textures`);
      return;
    }
    deleteTextures();
    const { cols, rows } = state.grid;
    let cell = state.grid.cell, source = state.bitmap;
    state.levels = [{ tex: makeTexture(gl, source), cell: cell, width: cols * cell, height: rows * cell }];
    while (Math.floor(cell / 2) >= MIN_LEVEL_CELL) {
      cell = Math.floor(cell / 2);
      const level = document.createElement("canvas");
      level.width = cols * cell;
      level.height = rows * cell;
      const ctx = level.getContext("2d");
      ctx.imageSmoothingEnabled = true;
      ctx.imageSmoothingQuality = "high";
      ctx.drawImage(source, 0, 0, level.width, level.height);
      state.levels.push({ tex: makeTexture(gl, level), cell: cell, width: level.width, height: level.height });
      source = level;
    }
    state.textureReady = true;
    showMessage("");
    canvas.dataset.ready = "1";
  }

  function deleteTextures() {
    if (state.gl && !state.lost) for (const level of state.levels) state.gl.deleteTexture(level.tex);
    state.levels = [];
  }

  // The smallest level whose cells are at least `px` device pixels (level 0 when none is).
  function levelFor(px) {
    let best = state.levels[0];
    for (const level of state.levels) if (level.cell >= px) best = level;
    return best;
  }

  function releaseGL() {
    const gl = state.gl;
    if (!gl) return;
    if (!state.lost) {
      deleteTextures();
      for (const b of Object.values(state.buffers || {})) gl.deleteBuffer(b);
      if (state.prog) gl.deleteProgram(state.prog);
      const lose = gl.getExtension("WEBGL_lose_context");
      if (lose) lose.loseContext();   // hand the context back now, not at garbage collection
    }
    state.gl = null;
    state.levels = [];
    state.textureReady = false;
  }

  // ------------------------------------------------------------------ view
  function pointsInView() {
    const [x0, y1] = toData(0, 0), [x1, y0] = toData(state.width, state.heightPx);
    let k = 0;
    for (let i = 0; i < state.n; i++) {
      const x = state.xy[2 * i], y = state.xy[2 * i + 1];
      if (x >= x0 && x <= x1 && y >= y0 && y <= y1) k++;
    }
    return k;
  }

  // Thumbnail side in CSS px for the current view (cached per view): zoom 1 size x zoom, within the fill bound.
  function thumbSize() {
    const view = `${state.cx},${state.cy},${state.zoom},${state.fit},${state.width},${state.heightPx},${state.n},${state.thumbPx},${state.grid && state.grid.cell}`;
    if (view === state.sizeView) return state.size;
    const cell = state.grid ? state.grid.cell : 1, area = FILL * state.width * state.heightPx;
    const base = state.thumbPx > 0 ? state.thumbPx : Math.max(MIN_THUMB_PX, Math.min(cell, Math.sqrt(area / Math.max(1, state.n))));
    const crowd = Math.sqrt(area / Math.max(1, pointsInView()));
    const size = Math.max(MIN_THUMB_PX, Math.min(base * Math.max(1, state.zoom), crowd, Math.max(base, cell * MAX_NATIVE_SCALE)));
    state.sizeView = view;
    state.size = size;
    return size;
  }
  function scale() { return state.fit * state.zoom; }   // CSS px per data unit
  function toData(px, py) {
    return [state.cx + (px - state.width / 2) / scale(), state.cy - (py - state.heightPx / 2) / scale()];
  }
  function toScreen(x, y) {
    return [(x - state.cx) * scale() + state.width / 2, state.heightPx / 2 - (y - state.cy) * scale()];
  }

  function fitView() {
    if (!state.n || !state.width) return;
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (let i = 0; i < state.n; i++) {
      const x = state.xy[2 * i], y = state.xy[2 * i + 1];
      if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y;
    }
    state.cx = (x0 + x1) / 2;
    state.cy = (y0 + y1) / 2;
    const pad = 1 - 2 * FIT_MARGIN;
    const spanX = Math.max(x1 - x0, 1e-9), spanY = Math.max(y1 - y0, 1e-9);
    state.fit = Math.min(state.width * pad / spanX, state.heightPx * pad / spanY);
    state.zoom = 1;
  }

  function resize() {
    const w = Math.max(1, Math.round(stage.clientWidth));
    const h = Math.max(1, state.height);
    const dpr = window.devicePixelRatio || 1;
    stage.style.height = h + "px";
    if (w === state.width && h === state.heightPx && dpr === state.dpr) return;
    const hadView = state.width > 0;
    const oldW = state.width, oldH = state.heightPx;
    Object.assign(state, { width: w, heightPx: h, dpr: dpr });
    setResolution(state.res);
    if (!hadView) fitView();
    else state.fit *= Math.min(w / oldW, h / oldH) || 1;
    requestDraw();
    sendHeight();
  }

  // ------------------------------------------------------------------ drawing
  function requestDraw() {
    state.dirty = true;
    if (!state.raf) state.raf = requestAnimationFrame(frame);
  }

  // The drawing buffer at `res` of the device pixels (CSS stretches it over the drawing area).
  function setResolution(res) {
    const w = Math.max(1, Math.round(state.width * state.dpr * res)), h = Math.max(1, Math.round(state.heightPx * state.dpr * res));
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
    state.res = res;
    canvas.dataset.res = String(res);
  }

  // A pan or zoom input: frames are drawn at MOTION_RES (software GL) until SETTLE_MS after the last one.
  function motion() {
    state.lastMotion = performance.now();
    clearTimeout(state.settleTimer);
    state.settleTimer = setTimeout(() => { if (state.res !== 1) requestDraw(); }, SETTLE_MS);
  }

  function frame() {
    state.raf = 0;
    if (!state.dirty) return;
    state.dirty = false;
    const moving = state.software && performance.now() - state.lastMotion < SETTLE_MS;
    setResolution(moving ? MOTION_RES : 1);
    if (moving) canvas.dataset.motionFrames = String(Number(canvas.dataset.motionFrames || 0) + 1);
    drawGL();
    drawOverlay();
    state.frames += 1;
    canvas.dataset.frames = String(state.frames);
  }

  function drawGL() {
    const gl = state.gl;
    if (!gl || state.lost) return;
    const bg = state.theme && state.theme.secondaryBackgroundColor ? hexRGB(state.theme.secondaryBackgroundColor) : [240, 242, 246];
    gl.viewport(0, 0, canvas.width, canvas.height);
    gl.clearColor(bg[0] / 255, bg[1] / 255, bg[2] / 255, 1);
    gl.clear(gl.COLOR_BUFFER_BIT);
    if (!state.textureReady || !state.n) return;
    const size = thumbSize();
    const L = state.loc, dpr = state.dpr * state.res, px = Math.max(1, Math.round(size * dpr)), level = levelFor(px);
    gl.activeTexture(gl.TEXTURE0);
    gl.bindTexture(gl.TEXTURE_2D, level.tex);
    gl.uniform2f(L.u_center, state.cx, state.cy);
    gl.uniform1f(L.u_scale, scale() * dpr);
    gl.uniform2f(L.u_viewport, canvas.width, canvas.height);
    gl.uniform1f(L.u_size, px);
    gl.uniform1f(L.u_border, Math.max(1, BORDER_PX * dpr));
    gl.uniform1f(L.u_tint, size >= TINT_BELOW_PX ? 0 : MAX_TINT * (TINT_BELOW_PX - size) / (TINT_BELOW_PX - MIN_THUMB_PX));
    gl.drawArrays(gl.TRIANGLES, 0, VERTICES * state.n);
  }

  // The selection and hover frames are two small positioned boxes, not a second full-size canvas:
  // software compositing would copy a whole overlay layer every frame.
  function placeBox(box, i, ring, color) {
    if (i < 0 || i >= state.n) { box.style.display = "none"; return; }
    const size = thumbSize(), [sx, sy] = toScreen(state.xy[2 * i], state.xy[2 * i + 1]), side = size + 2 * ring;
    box.style.display = "block";
    box.style.width = box.style.height = `${side}px`;
    box.style.borderWidth = `${ring}px`;
    if (color) box.style.borderColor = color;
    box.style.transform = `translate(${sx - side / 2}px, ${sy - side / 2}px)`;
  }
  function drawOverlay() {
    placeBox(selectBox, state.selected, SELECT_RING_PX, null);
    placeBox(hoverBox, state.hover, HOVER_RING_PX, state.colors[state.labels[state.hover]] || "#111111");
  }

  // ------------------------------------------------------------------ picking
  function buildPickGrid() {
    const n = state.n, xy = state.xy;
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (let i = 0; i < n; i++) {
      const x = xy[2 * i], y = xy[2 * i + 1];
      if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y;
    }
    const side = Math.max(1, Math.min(PICK_CELLS_PER_SIDE, Math.ceil(Math.sqrt(n / 2))));
    const cw = Math.max(x1 - x0, 1e-9) / side, ch = Math.max(y1 - y0, 1e-9) / side;
    const cellOf = (i) => Math.min(side - 1, Math.floor((xy[2 * i] - x0) / cw)) + side * Math.min(side - 1, Math.floor((xy[2 * i + 1] - y0) / ch));
    const start = new Int32Array(side * side + 1);
    for (let i = 0; i < n; i++) start[cellOf(i) + 1] += 1;
    for (let c = 0; c < side * side; c++) start[c + 1] += start[c];
    const fill = start.slice(0, side * side);
    const items = new Int32Array(n);
    for (let i = 0; i < n; i++) items[fill[cellOf(i)]++] = i;
    state.pick = { x0: x0, y0: y0, cw: cw, ch: ch, side: side, start: start, items: items };
  }

  // The topmost (highest index: drawn last) thumbnail under CSS pixel (px, py), or -1.
  function pickAt(px, py) {
    const g = state.pick;
    if (!g || !state.n) return -1;
    const [x, y] = toData(px, py);
    const half = thumbSize() / 2 / scale();   // half a thumbnail in data units
    const clampCell = (v, d0, d) => Math.max(0, Math.min(g.side - 1, Math.floor((v - d0) / d)));
    const cx0 = clampCell(x - half, g.x0, g.cw), cx1 = clampCell(x + half, g.x0, g.cw);
    const cy0 = clampCell(y - half, g.y0, g.ch), cy1 = clampCell(y + half, g.y0, g.ch);
    let best = -1;
    for (let cy = cy0; cy <= cy1; cy++) {
      for (let cx = cx0; cx <= cx1; cx++) {
        const c = cx + g.side * cy;
        for (let k = g.start[c]; k < g.start[c + 1]; k++) {
          const i = g.items[k];
          if (i > best && Math.abs(state.xy[2 * i] - x) <= half && Math.abs(state.xy[2 * i + 1] - y) <= half) best = i;
        }
      }
    }
    return best;
  }

  function setHover(i, px, py) {
    if (i !== state.hover) { state.hover = i; requestDraw(); }
    canvas.classList.toggle("over", i >= 0 && !state.drag);
    if (i < 0 || !state.bitmap) { tip.style.display = "none"; return; }
    const cell = state.grid.cell, k = Math.max(1, Math.floor(TIP_TARGET_PX / cell)), side = cell * k;
    if (big.width !== side) { big.width = side; big.height = side; }
    bctx.imageSmoothingEnabled = false;
    const row = Math.floor(i / state.grid.cols), col = i - row * state.grid.cols;
    bctx.drawImage(state.bitmap, col * cell, row * cell, cell, cell, 0, 0, side, side);
    const label = state.labels[i];
    big.style.borderColor = state.colors[label] || "#888";
    caption.textContent = `${state.names[label] !== undefined ? state.names[label] : label} · image #${i}`;
    tip.style.display = "block";
    const tw = tip.offsetWidth, th = tip.offsetHeight;
    let left = px + TIP_OFFSET_PX, top = py + TIP_OFFSET_PX;
    if (left + tw > state.width) left = px - TIP_OFFSET_PX - tw;
    if (top + th > state.heightPx) top = py - TIP_OFFSET_PX - th;
    tip.style.left = Math.max(0, left) + "px";
    tip.style.top = Math.max(0, top) + "px";
  }

  // ------------------------------------------------------------------ input
  function local(ev) {
    const r = canvas.getBoundingClientRect();
    return [ev.clientX - r.left, ev.clientY - r.top];
  }

  canvas.addEventListener("pointerdown", (ev) => {
    if (ev.button !== 0) return;
    const [px, py] = local(ev);
    state.drag = { id: ev.pointerId, x: px, y: py, startX: px, startY: py, moved: false };
    try { canvas.setPointerCapture(ev.pointerId); } catch (e) { /* a synthetic pointer (tests, benches) cannot be captured */ }
    canvas.classList.add("dragging");
  });
  canvas.addEventListener("pointermove", (ev) => {
    const [px, py] = local(ev);
    state.mouse = [px, py];
    const d = state.drag;
    if (d && d.id === ev.pointerId) {
      if (!d.moved && Math.hypot(px - d.startX, py - d.startY) >= CLICK_SLOP_PX) d.moved = true;
      if (d.moved) {
        state.cx -= (px - d.x) / scale();
        state.cy += (py - d.y) / scale();
        d.x = px; d.y = py;
        setHover(-1);
        motion();
        requestDraw();
        return;
      }
    }
    setHover(pickAt(px, py), px, py);
  });
  function endDrag(ev, cancelled) {
    const d = state.drag;
    if (!d || d.id !== ev.pointerId) return;
    state.drag = null;
    canvas.classList.remove("dragging");
    const [px, py] = local(ev);
    if (!cancelled && !d.moved) {
      const i = pickAt(px, py);
      if (i >= 0) {
        state.clicks += 1;
        state.selected = i;
        requestDraw();
        send(MSG.VALUE, { value: { index: i, click: state.clicks }, dataType: "json" });
      }
    }
    setHover(pickAt(px, py), px, py);
  }
  canvas.addEventListener("pointerup", (ev) => endDrag(ev, false));
  canvas.addEventListener("pointercancel", (ev) => endDrag(ev, true));
  canvas.addEventListener("pointerleave", () => { if (!state.drag) { state.mouse = null; setHover(-1); } });
  canvas.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const [px, py] = local(ev);
    const delta = ev.deltaMode === 1 ? ev.deltaY * 16 : ev.deltaMode === 2 ? ev.deltaY * state.heightPx : ev.deltaY;
    const before = toData(px, py);
    state.zoom = Math.min(MAX_ZOOM, Math.max(MIN_ZOOM, state.zoom * Math.exp(-delta * ZOOM_PER_WHEEL_PX)));
    const after = toData(px, py);
    state.cx += before[0] - after[0];   // the data point under the cursor stays under it
    state.cy += before[1] - after[1];
    motion();
    requestDraw();
    setHover(pickAt(px, py), px, py);
  }, { passive: false });
  canvas.addEventListener("dblclick", () => { fitView(); requestDraw(); });

  canvas.addEventListener("webglcontextlost", (ev) => { ev.preventDefault(); state.lost = true; state.textureReady = false; });
  canvas.addEventListener("webglcontextrestored", () => {
    try { initGL(); uploadVertices(); uploadTexture(); requestDraw(); } catch (e) { showMessage(String(e.message || e)); }
  });
  window.addEventListener("pagehide", releaseGL);   // the iframe is going away: free its WebGL context at once
  window.addEventListener("resize", resize);

  // ------------------------------------------------------------------ arguments from Python
  function hexRGB(hex) {
    const h = String(hex).replace("#", "");
    return [parseInt(h.slice(0, 2), 16) || 0, parseInt(h.slice(2, 4), 16) || 0, parseInt(h.slice(4, 6), 16) || 0];
  }
  function showMessage(text) {
    message.textContent = text;
    message.style.display = text ? "block" : "none";
  }
  function copyBytes(u8) { return u8.slice().buffer; }   // aligned copy: a bytes argument may be a view at any offset

  function renderLegend(hint) {
    legend.textContent = "";
    const present = new Set(state.labels);
    for (let c = 0; c < state.names.length; c++) {
      if (!present.has(c)) continue;
      const e = document.createElement("span"), s = document.createElement("span");
      e.className = "entry"; s.className = "swatch"; s.style.background = state.colors[c];
      e.append(s, document.createTextNode(state.names[c]));
      legend.append(e);
    }
    const h = document.createElement("span");
    h.className = "hint";
    h.textContent = hint;
    legend.append(h);
  }

  function loadSheet(key, bytes) {
    state.sheetKey = key;
    state.textureReady = false;
    showMessage("loading thumbnails…");
    createImageBitmap(new Blob([bytes], { type: "image/png" }), { premultiplyAlpha: "none", colorSpaceConversion: "none" })
      .then((bitmap) => {
        if (key !== state.sheetKey) { bitmap.close(); return; }   // a newer sheet arrived meanwhile
        if (state.bitmap) state.bitmap.close();
        state.bitmap = bitmap;
        uploadTexture();   // once per sprite sheet
        requestDraw();
      })
      .catch((e) => showMessage("the sprite sheet could not be decoded: " + (e && e.message ? e.message : e)));
  }

  function onRender(args, theme) {
    state.theme = theme || null;
    if (theme) {
      document.body.style.color = theme.textColor || "";
      if (theme.font) document.body.style.fontFamily = theme.font;
    }
    state.height = Number(args.height) || 580;
    state.thumbPx = Number(args.thumb_px) || 0;
    state.grid = args.grid;
    const newData = args.data_key !== state.dataKey;
    if (newData) {
      state.dataKey = args.data_key;
      state.n = Number(args.count) | 0;
      state.xy = new Float32Array(copyBytes(args.xy), 0, 2 * state.n);
      state.labels = new Int32Array(copyBytes(args.labels), 0, state.n);
      state.hover = -1;
    }
    const colors = args.colors || [];
    const newColors = colors.join() !== state.colors.join();
    state.names = args.class_names || [];
    state.colors = colors;
    state.rgb = colors.map(hexRGB);
    state.selected = Number.isInteger(args.selected) ? args.selected : -1;
    if (newData || newColors) uploadVertices();
    if (newData) {
      buildPickGrid();
      if (state.width) fitView();
    }
    renderLegend("drag: pan · wheel: zoom · double-click: fit · click: select");
    resize();
    if (args.sheet_key !== state.sheetKey) loadSheet(args.sheet_key, args.sheet);
    requestDraw();
    sendHeight();
  }

  window.addEventListener("message", (ev) => {
    const d = ev.data;
    if (!d || d.type !== MSG.RENDER) return;
    try { onRender(d.args || {}, d.theme); } catch (e) { showMessage(String(e && e.message ? e.message : e)); }
  });

  try { initGL(); } catch (e) { showMessage(String(e.message || e)); }
  send(MSG.READY, { apiVersion: 1 });
  requestDraw();
})();
