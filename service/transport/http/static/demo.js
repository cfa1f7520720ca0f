// The segserve demo page: the public API only (/v1/models, /segment), no build step.
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
  $("status").textContent = list.models.length ? "Drop or pick an image." : "The server has no model.";
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
  if (body.task === "instance") {
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

function showTimings(timing, roundTripMs) {
  const rows = $("timings").tBodies[0];
  rows.replaceChildren();
  for (const [name, ms] of [["queue", timing.queue], ["compute", timing.compute], ["server total", timing.total], ["round trip (this page)", roundTripMs]]) {
    rows.append(row([[name], [`${ms.toFixed(1)} ms`, "num"]]));
  }
}

async function segment(file) {
  $("error").hidden = true;
  $("status").textContent = `Segmenting ${file.name}...`;
  const model = $("model").value;
  const query = (format) => `/segment?${new URLSearchParams(model ? { model, format } : { format })}`;
  const type = file.type || "application/octet-stream";
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
  const image = $("overlay");
  if (image.src) URL.revokeObjectURL(image.src);
  image.src = URL.createObjectURL(await overlay.blob());
  await image.decode();
  $("caption").textContent = `${file.name}: ${body.width}x${body.height}, ${body.model} (${body.task})`;
  showTable(body);
  showTimings(body.timing_ms, roundTripMs);
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
