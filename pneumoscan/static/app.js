// pneumoscan page: upload or drop an X-ray, show the reading against the threshold and the Grad-CAM overlay.
// Plain JS, no build step, nothing loaded from other origins. Server text is only ever set as textContent.
"use strict";

const $ = (id) => document.getElementById(id);
let maxUploadBytes = null;
let imageUrl = null;

function pct(p) {
  return `${(100 * p).toFixed(1)}%`;
}

function mb(bytes) {
  return `${Number((bytes / 2 ** 20).toPrecision(3))} MB`;  // 20 MB, 0.5 MB: never rounded to 0 or 1
}

// The service may require an API key for /v1/*: sent from the field, never stored.
function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  $("result").hidden = true;
  $("status").textContent = "";
}

function showCard(info) {
  maxUploadBytes = info.max_upload_bytes;
  const m = info.val_metrics || {};
  const fmt = (v) => (typeof v === "number" ? v.toFixed(3) : "n/a");
  const rows = [
    ["Model", info.id],
    ["Version", info.version],
    ["Architecture", `${info.architecture}, ${info.image_size} px (${info.resize_policy})`],
    ["Task", `${info.task}: ${info.classes.join(" / ")}`],
    ["Threshold", `${info.threshold.toFixed(3)} (${info.threshold_policy})`],
    ["Validation", `AUC ${fmt(m.auc)}, sensitivity ${fmt(m.sensitivity)}, specificity ${fmt(m.specificity)}` +
      (m.n ? `, n = ${m.n}` : "")],
    ["Training data", info.data_fingerprint || "not recorded"],
    ...(info.external_evaluations || []).map((e) => [`Evaluated on ${e.data}`,
      `AUC ${fmt(e.metrics.auc.value)}, sensitivity ${fmt(e.metrics.sensitivity.value)}, ` +
      `specificity ${fmt(e.metrics.specificity.value)}, n = ${e.n} (${e.date})`]),
    ["Second stage", info.etiology ? `${info.etiology.id} (${info.etiology.classes.join(" / ")})` : "none"],
    ["Upload limit", mb(info.max_upload_bytes)],
  ];
  $("intended-use").textContent = info.intended_use;
  const list = $("card");
  list.replaceChildren();
  for (const [name, value] of rows) {
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = name;
    dd.textContent = value;
    list.append(dt, dd);
  }
}

// Scope warnings (a lateral view, an adult, a CT slice, a JPEG without DICOM tags...): the reading is shown, and so
// is why it may not apply.
function showWarnings(warnings) {
  const list = $("warnings");
  list.replaceChildren();
  for (const text of warnings) {
    const item = document.createElement("li");
    item.textContent = `Scope: ${text}`;
    list.append(item);
  }
  list.hidden = warnings.length === 0;
}

function showResult(file, r) {
  $("error").hidden = true;
  $("status").textContent = "";
  const positive = r.label === r.positive;
  $("label").textContent = r.label;
  $("label").className = positive ? "positive" : "negative";
  $("bar-fill").style.width = pct(r.probability);
  $("bar-fill").className = positive ? "fill positive" : "fill";
  $("bar-threshold").style.left = pct(r.threshold);
  $("bar").setAttribute("aria-valuenow", r.probability.toFixed(4));
  $("probability").textContent =
    `P(${r.positive}) = ${r.probability.toFixed(3)}; threshold ${r.threshold.toFixed(3)}; model ${r.model_id}`;
  const e = r.etiology;
  $("etiology").hidden = !e;
  if (e) {
    $("etiology").textContent = `Etiology: ${e.label} (P(${e.positive}) = ${e.probability.toFixed(3)}, threshold ${e.threshold.toFixed(3)})`;
  }
  showWarnings(r.warnings || []);
  if (imageUrl) URL.revokeObjectURL(imageUrl);
  imageUrl = URL.createObjectURL(file);
  $("image").dataset.broken = "0";
  $("image").src = imageUrl;
  if (r.heatmap) $("overlay").src = r.heatmap;
  else $("overlay").removeAttribute("src");
  $("caption").textContent = "";
  $("result").hidden = false;
  render();
}

// The overlay replaces the image when toggled on; a DICOM file, which browsers cannot display, falls back to it
// (without switching the toggle, so the next film shows as the reader left it).
function render() {
  const broken = $("image").dataset.broken === "1";
  const overlay = ($("heatmap-toggle").checked || broken) && $("overlay").getAttribute("src");
  $("overlay").hidden = !overlay;
  $("image").hidden = Boolean(overlay) || broken;
}

$("image").addEventListener("load", () => { $("image").dataset.broken = "0"; render(); });
$("image").addEventListener("error", () => {
  if (!$("image").getAttribute("src")) return;
  $("image").dataset.broken = "1";
  $("caption").textContent = "This browser cannot display the file itself (DICOM); the overlay shows the decoded image.";
  render();
});
$("heatmap-toggle").addEventListener("change", render);

async function analyse(file) {
  if (!file) return;
  if (file.size === 0) return showError("Rejected: the file is empty (0 bytes).");
  if (maxUploadBytes !== null && file.size > maxUploadBytes) {
    return showError(`Rejected: the file is ${mb(file.size)}; the limit is ${mb(maxUploadBytes)}.`);
  }
  $("status").textContent = "Analysing...";
  const form = new FormData();
  form.append("file", file);
  let response;
  try {
    response = await fetch("/v1/predict?heatmap=true", { method: "POST", body: form, headers: authHeaders() });
  } catch (err) {
    return showError(`The server could not be reached: ${err.message}`);
  }
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    body = null;
  }
  if (!response.ok) {
    return showError(`Rejected: ${body && body.error ? body.error : `HTTP ${response.status}`}`);
  }
  showResult(file, body);
}

$("file").addEventListener("change", () => {
  analyse($("file").files[0]);
  $("file").value = "";  // choosing the same file again still triggers a change
});

const drop = $("drop");
for (const type of ["dragenter", "dragover"]) {
  drop.addEventListener(type, (event) => { event.preventDefault(); drop.classList.add("over"); });
}
for (const type of ["dragleave", "drop"]) {
  drop.addEventListener(type, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  analyse(event.dataTransfer.files[0]);
});

async function loadCard() {
  try {
    const response = await fetch("/v1/model", { headers: authHeaders() });
    const body = await response.json();
    if (!response.ok) throw new Error(body && body.error ? body.error : `HTTP ${response.status}`);
    $("error").hidden = true;
    showCard(body);
  } catch (err) {
    showError(`Could not load the model card: ${err.message}`);
  }
}

$("api-key").addEventListener("change", loadCard);
loadCard();
