// The segserve demo page: the public API only (/v1/models, /segment, /segment/video), no build step.
"use strict";

const $ = (id) => document.getElementById(id);

// Pascal VOC's palette, as segserve.codecs.overlay.palette draws the masks.
function colour(id) {
  const rgb = [0, 0, 0];
  for (let shift = 0; shift < 8; shift++) {
    for (let channel = 0; channel < 3; channel++) {
      rgb[channel] |= ((id >> (shift * 3 + channel)) & 1) << (7 - shift);
    }
  }
  return `rgb(${rgb.join(",")})`;
}

function headers(extra = {}) {
  const key = $("api-key").value.trim();
  return key ? { ...extra, "X-API-Key": key } : extra;
}

// Any non-2xx answer -> "STATUS code: message", from segserve's {"error": {"code", "message"}}.
async function failure(response) {
  let detail = response.statusText;
  try {
    const body = await response.json();
    if (body.error && body.error.message) detail = `${body.error.code}: ${body.error.message}`;
  } catch (_) { /* not JSON: the status text says it */ }
  return new Error(`${response.status} ${detail}`);
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  $("status").textContent = "";
}

async function loadModels() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (!response.ok) throw await failure(response);
  const list = await response.json();
  const select = $("model");
  select.replaceChildren();
  for (const m of list.models) {
    const option = new Option(`${m.name} (${m.task}${m.state === "READY" ? "" : ", " + m.state})`, m.name);
    option.disabled = m.state !== "READY";
    option.selected = m.name === list.default_model;
    select.add(option);
  }
  $("status").textContent = list.models.length ? "Drop or pick an image or a short video." : "The server has no model.";
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const [text, cls, swatch] of cells) {
    const td = document.createElement("td");
    if (cls) td.className = cls;
    if (swatch) {
      const span = document.createElement("span");
      span.className = "swatch";
      span.style.background = swatch;
      td.append(span);
    }
    td.append(text);
    tr.append(td);
  }
  return tr;
}

function showTable(body) {
  const head = $("areas").tHead, rows = $("areas").tBodies[0];
  rows.replaceChildren();
  const pixels = body.width * body.height;
  if (body.task === "instance" || body.task === "keypoints") {
    $("table-title").textContent = `Instances (${body.instances.length})`;
    head.replaceChildren(row([["label"], ["score", "num"], ["box (x1, y1, x2, y2)"]]));
    for (const i of body.instances) {
      rows.append(row([[i.label, "", colour(i.class_id + 1)], [i.score.toFixed(3), "num"], [i.box.map((v) => v.toFixed(0)).join(", ")]]));
    }
  } else {
    $("table-title").textContent = "Classes";
    head.replaceChildren(row([["class"], ["pixels", "num"], ["area", "num"]]));
    for (const s of body.segments) {
      rows.append(row([[s.label, "", colour(s.class_id)], [String(s.area), "num"], [`${(100 * s.area / pixels).toFixed(1)} %`, "num"]]));
    }
  }
}

function showTimings(timings) {
  const rows = $("timings").tBodies[0];
  rows.replaceChildren();
  for (const [name, ms] of timings) rows.append(row([[name], [`${ms.toFixed(1)} ms`, "num"]]));
}

let player = null;  // the video's frame timer

function stopPlayer() {
  if (player !== null) clearInterval(player);
  player = null;
}

async function show(src) {
  const image = $("overlay");
  if (image.src.startsWith("blob:")) URL.revokeObjectURL(image.src);
  image.src = src;
  await image.decode();
}

async function segmentImage(file, model, type) {
  const query = (format) => `/segment?${new URLSearchParams(model ? { model, format } : { format })}`;
  const started = performance.now();
  // The masks as JSON (areas, timings) and the overlay JPEG, side by side.
  const [json, overlay] = await Promise.all([
    fetch(query("json"), { method: "POST", body: file, headers: headers({ "Content-Type": type }) }),
    fetch(query("overlay"), { method: "POST", body: file, headers: headers({ "Content-Type": type }) }),
  ]);
  const roundTripMs = performance.now() - started;
  if (!json.ok) throw await failure(json);
  if (!overlay.ok) throw await failure(overlay);
  const body = await json.json();
  await show(URL.createObjectURL(await overlay.blob()));
  $("caption").textContent = `${file.name}: ${body.width}x${body.height}, ${body.model} (${body.task})`;
  showTable(body);
  const t = body.timing_ms;
  showTimings([["queue", t.queue], ["compute", t.compute], ["server total", t.total], ["round trip (this page)", roundTripMs]]);
}

// A short video: one chunk to /segment/video with format=overlay, its frames played in turn.
async function segmentVideo(file, model, type) {
  const query = new URLSearchParams(model ? { model, format: "overlay" } : { format: "overlay" });
  const started = performance.now();
  const response = await fetch(`/segment/video?${query}`, { method: "POST", body: file, headers: headers({ "Content-Type": type }) });
  const roundTripMs = performance.now() - started;
  if (!response.ok) throw await failure(response);
  const body = await response.json();
  const frames = body.frames.map((f) => `data:image/jpeg;base64,${f.overlay}`);
  await show(frames[0]);
  $("caption").textContent = `${file.name}: ${frames.length} frames of ${body.width}x${body.height}, ` +
    `${body.keyframes} keyframes, ${body.model} (${body.task})`;
  $("table-title").textContent = `Frames (${frames.length})`;
  const head = $("areas").tHead, rows = $("areas").tBodies[0];
  head.replaceChildren(row([["frame", "num"], ["time", "num"], ["keyframe"]]));
  rows.replaceChildren(...body.frames.map((f) => row([[String(f.index), "num"], [f.pts === null ? "" : `${f.pts.toFixed(2)} s`, "num"], [f.keyframe ? "yes" : ""]])));
  const t = body.timing_ms;
  showTimings([["decode", t.decode], ["segment", t.segment], ["server total", t.total], ["round trip (this page)", roundTripMs]]);
  let next = 0;
  player = setInterval(() => { next = (next + 1) % frames.length; $("overlay").src = frames[next]; }, 100);
}

async function segment(file) {
  stopPlayer();
  $("error").hidden = true;
  $("status").textContent = `Segmenting ${file.name}...`;
  const model = $("model").value;
  const type = file.type || "application/octet-stream";
  await (type.startsWith("video/") ? segmentVideo : segmentImage)(file, model, type);
  $("result").hidden = false;
  $("status").textContent = "Done.";
}

function run(file) {
  if (file) segment(file).catch((err) => showError(err.message));
}

$("file").addEventListener("change", (event) => run(event.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  run(event.dataTransfer.files[0]);
});
$("api-key").addEventListener("change", () => loadModels().catch((err) => showError(err.message)));
loadModels().catch((err) => showError(`cannot list the models: ${err.message}`));
