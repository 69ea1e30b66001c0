// pneumoscan page: upload or drop X-rays, read each result against the threshold, look at the film (window/level,
// zoom, pan, invert) and, only when asked, at its Grad-CAM map in a perceptually uniform colour scale.
// Plain JS, no build step, nothing loaded from other origins. Server text is only ever set as textContent.
"use strict";

const $ = (id) => document.getElementById(id);
let maxUploadBytes = null;
let thresholdInterval = null;  // [low, high]: the 95 % confidence interval of the threshold
// what the model's heatmaps show and on which scale, in the service's words (GET /v1/model: heatmap_caption, the
// overlay's caption; heatmap_top and heatmap_top_spoken, the top of the colour scale shown and said; heatmap_negative
// and heatmap_empty, what the overlay's caption adds for a film read as negative and for an empty map); null until
// the card is loaded: the page has no words of its own for a scale it does not know
let heatmapWords = null;
// whether the service draws heatmaps (GET /v1/model: heatmaps, false on one started without them): where it does not,
// the page offers none and says why, rather than a button each press of which is refused (422, heatmap_unavailable)
let heatmapsDrawn = true;
// the card on the page: its card_digest, which each reading names (/v1/predict), so a reading of another card (the
// service restarted with another bundle, threshold or appearance record, under the same weights and threshold too)
// is never drawn with this one's threshold band, heatmap legend or colouring; and the model ("id version") and
// threshold it describes, which a refusal names
let cardDigest = null;
let cardModel = null;
let cardThreshold = null;
// what the card says of its model's readings, kept with each reading as it comes (a film's readWith): a film read
// before the service restarted with another model was coloured, and its second stage listed, by the new card.
// contentChecked, whether the model checks a film's content against its training films' (content_checked: without
// the check, noise or a form is read as confidently as a film), and followsAnother, an etiology model served alone
// (bacteria is no all-clear): whether its readings may be coloured as clear calls (lookOf); second, the service's
// second stage ({task, positive}: etiology, or one of a site's own), null without one; classes, the model's classes
// when it has more than two (the CSV gives each one's probability); caveats, how many the card gives of its model and
// second stage (said with each reading: on screen they are in the card beside it). null until a card loads.
let readWith = null;
// the film formats the service reads (GET /v1/model: film_formats, one entry a registered reader): named above the
// file picker, and a film no JPEG or PNG header marks is described as the format whose type or file ending it has
let filmFormats = [];
const CLASS_FIELD = "probability_";  // + a class: its probability's CSV column, named as predict's results name it

// viewed: whether the reader has had the film's reading on screen by choice (Show, Previous or Next film) or left at
// the end of its batch, not only passed by as the batch was read; window: the window it was last drawn at (keepWindow);
// frame: its zoom and pan (loadFilm); sha256: the SHA-256 of its file's bytes (sha256Of, or the service's:
// servicesDigest), which proves a film dropped again after a reload to be the one a kept reading is of
// (keepSession), null where none was had; file: null for a film kept through a reload, whose pixels the tab does
// not keep
const films = [];  // {id, name, file, sha256, dicom, format, shown, status, result, error, readWith, cam, viewed,
//                     window, frame}
let current = null;
// whether the reader has chosen a film to show (Show, Previous or Next film) since the batch being read began: the
// readings that follow go to the list alone, not over the film chosen
let chosen = false;
let lastShown = null;  // the film last shown, kept where its reading is refused (current is then null)
let sortKey = null;
let sortAscending = true;

// Window presets on the 8-bit film the page shows: [level, width]. A JPEG has no Hounsfield or detector units,
// so these pick a band of gray levels, named for what usually falls in it.
const PRESETS = { default: [128, 255], lung: [80, 140], soft: [128, 120], bone: [190, 110] };
// A film's default window: the whole range, not inverted
const DEFAULT_WINDOW = { preset: "default", level: PRESETS.default[0], width: PRESETS.default[1], invert: false };
// film: whose pixels gray holds (the film on screen may still be decoding); original: the decoded image of a film
// whose copy in gray is reduced (null when gray holds the film's own pixels), read again for the part in view when
// zoomed in past the copy's pixels
const view = { film: null, gray: null, original: null, cam: null, w: 0, h: 0, level: 128, width: 255, invert: false,
  zoom: 1, panX: 0, panY: 0 };
const composed = document.createElement("canvas");  // the film through window/level (and the map), at view's size
let composedFrame = null;  // composed's pixels, kept while the film's size stays: not 16 MB of garbage a step
const closeup = document.createElement("canvas");  // the part of the original in view, at most the viewer's size
let detail = null;  // the part of the original closeup shows and its pixels: null for each film loaded

// Three decimals (or `digits`), never rounded up to 1 nor down to 0: a sensitivity that missed a film, or a
// probability short of certainty, must not read as a perfect 1.000, nor a small one as 0.000.
function figure(v, digits = 3) {
  if (typeof v !== "number") return "n/a";
  const unit = 10 ** digits;
  // nor to 0: a probability of 0.0004 read as exactly none
  if (v > 0 && v < 0.5 / unit) return `< ${(1 / unit).toFixed(digits)}`;
  return (v < 1 && v.toFixed(digits) === (1).toFixed(digits) ? Math.floor(v * unit) / unit : v).toFixed(digits);
}

// A probability and the threshold it was called at, shown together: at the fewest decimals, three or more, that tell
// them apart. At three, 0.4625 under a threshold of 0.4627 read "0.463; threshold 0.463" beside NORMAL, as if it had
// reached the threshold; rounding keeps their order, so told apart, each shows on its own side of the other.
function figuresApart(p, t) {
  let digits = 3;
  while (digits < 20 && p !== t && figure(p, digits) === figure(t, digits)) digits++;
  return [figure(p, digits), figure(t, digits)];
}

// A probability shown without its threshold beside it (the list): alone where three decimals tell it from the
// threshold (as the card and the panel's key show it), else with the threshold at the decimals that do.
function probabilityText(p, t) {
  const [shown, at] = figuresApart(p, t);
  return shown === figure(p) ? shown : `${shown}, threshold ${at}`;
}

// Text with a capital first letter: a task's name as the title of its reading (etiology: "Etiology"), so a second
// stage of one's own is not called one; a film's refusal in the list's words as an alert ("Rejected: ...").
function titled(text) {
  return text.charAt(0).toUpperCase() + text.slice(1);
}

// "A, B or C", as the service's refusals list the formats it reads
function oneOf(names) {
  return names.length > 1 ? `${names.slice(0, -1).join(", ")} or ${names[names.length - 1]}` : names.join("");
}

function pct(p) {
  return `${(100 * p).toFixed(1)}%`;
}

function mb(bytes) {
  return `${Number((bytes / 2 ** 20).toPrecision(3))} MB`;  // 20 MB, 0.5 MB: never rounded to 0 or 1
}

// The service may require an API key for its API: sent from the field, never stored.
function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// Text for a live region or alert that a screen reader says even when it is the text already there: it says a region
// when its text changes, so the same refusal again (one unreadable file dropped twice), or + pressed again at the
// furthest zoom, was left unsaid. A zero-width space at its end, there every other time, changes it unseen.
function sayAgain(element, text) {
  element.textContent = element.textContent === text ? `${text}\u200b` : text;
}

// A refused film hides the reading on screen (it is another film's) and no film is current, so a late heatmap
// reply for that film leaves the refusal alone; a refused heatmap leaves the reading (keepResult).
function showError(message, keepResult = false) {
  sayAgain($("error"), message);
  $("error").hidden = false;
  $("result").hidden = !keepResult;
  $("status").textContent = "";
  if (!keepResult) current = null;
}

function showCard(info) {
  cardDigest = info.card_digest;
  cardModel = `${info.id} ${info.version}`;
  cardThreshold = info.threshold;
  readWith = { contentChecked: info.content_checked, followsAnother: info.follows.length > 0,
    second: info.etiology ? { task: info.etiology.task, positive: info.etiology.positive } : null,
    classes: info.classes.length > 2 ? info.classes : [],
    caveats: (info.caveats || []).length + (info.etiology ? (info.etiology.caveats || []).length : 0) };
  maxUploadBytes = info.max_upload_bytes;
  filmFormats = info.film_formats;
  $("formats").textContent = oneOf(filmFormats.flatMap((f) => f.formats));
  thresholdInterval = info.threshold_interval && info.threshold_interval.length === 2 ? info.threshold_interval : null;
  heatmapWords = { caption: info.heatmap_caption, top: info.heatmap_top, spoken: info.heatmap_top_spoken,
    negative: info.heatmap_negative, empty: info.heatmap_empty };
  $("legend-top").textContent = heatmapWords.top;
  heatmapsDrawn = info.heatmaps !== false;
  for (const tool of $("heat-tools").children) tool.hidden = (tool.id === "heatmap-off") === heatmapsDrawn;
  $("h-key").textContent = heatmapsDrawn ? "h shows or hides the heatmap."
    : "h says why this service draws no heatmaps.";
  $("legend-bar").setAttribute("aria-label",
    `colour scale, viridis: dark purple is low, yellow is ${heatmapWords.spoken}`);
  renderList();
  const m = info.val_metrics || {};
  const rows = [
    ["Model", info.id],
    ["Version", info.version],
    ["Architecture", `${info.architecture}, ${info.image_size} px (${info.resize_policy})`],
    ["Task", `${info.task}: ${info.classes.join(" / ")}`],
    ["Threshold", `${figure(info.threshold)} (${info.threshold_policy})`],
    // each row says the threshold its sensitivity and specificity were measured at: after `pneumoscan threshold`
    // the one in force is another
    ["Validation", `AUC ${figure(m.auc)}, sensitivity ${figure(m.sensitivity)}, specificity ${figure(m.specificity)}` +
      (m.threshold != null ? ` at threshold ${figure(m.threshold)}` : "") + (m.n ? `, n = ${filmsOf(m)}` : "")],
    ["Training data", info.data_fingerprint || "not recorded"],
    ...(info.caveats || []).map((text) => ["Caveat", text]),
    ...(info.etiology ? info.etiology.caveats || [] : []).map((text) => ["Second stage caveat", text]),
    ["Image content check", info.content_checked ? "on: films unlike the training films are flagged"
      : "off: this bundle records no appearance of its training films, so nothing flags a film that is no chest film"],
    ...(info.external_evaluations || []).map((e) => [`Evaluated on ${e.data}`,
      `AUC ${figure(e.metrics.auc.value)}, sensitivity ${figure(e.metrics.sensitivity.value)}, ` +
      `specificity ${figure(e.metrics.specificity.value)}` +
      (e.threshold != null ? ` at threshold ${figure(e.threshold)}` : "") + `, n = ${filmsOf(e)} (${e.date})` +
      filmsNote(e)]),
    // newest last, as the card records them (`pneumoscan threshold`)
    ...(info.threshold_records || []).map((r) => [`Threshold chosen on ${r.data}`,
      `${figure(r.previous_threshold)} to ${figure(r.threshold)} (${r.policy}): ` +
      `sensitivity ${figure(r.sensitivity)}, specificity ${figure(r.specificity)} on those films, ` +
      `n = ${filmsOf(r)} (${r.date})` + filmsNote(r)]),
    ["Second stage", info.etiology ? `${info.etiology.id} (${info.etiology.classes.join(" / ")})` : "none"],
    ["Upload limit", mb(info.max_upload_bytes)],
  ];
  $("intended-use").textContent = info.intended_use;
  $("print-intended").textContent = `Intended use: ${info.intended_use}`;
  // what the model is not for, beside what it is for: a reader of a lateral or adult film sees it at once
  const notFor = info.out_of_scope || [];
  $("out-of-scope-list").replaceChildren(...notFor.map((text) => {
    const item = document.createElement("li");
    item.textContent = text;
    return item;
  }));
  $("out-of-scope").hidden = notFor.length === 0;
  fillList($("card"), rows);
}

// "322 films of 172 patients": one child's films are scored alike, so the patients, where the card counts them, say
// how much evidence the figures rest on
function filmsOf(counts) {
  const patients = counts.patients && counts.patients.all;
  return patients ? `${counts.n} films of ${patients} patients` : `${counts.n} films`;
}

// Whether the films of a record (an evaluation, a threshold) were checked not to be the training films of the model:
// figures on films it trained on flatter it, and a threshold chosen on them for a sensitivity target comes out too
// high; a record older than the check does not say
function filmsNote(record) {
  if (record.films_checked === false) return "; films not checked against its training films";
  const unknown = "; whether its films were checked against its training films is not recorded";
  return record.films_checked == null ? unknown : "";
}

function fillList(list, rows) {
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
// is why it may not apply. Out of scope (a warning for which the service files no report), the warnings are the
// reasons under the notice above the reading, so they are read first.
function showWarnings(warnings, inScope) {
  const list = $("warnings");
  list.replaceChildren();
  for (const text of warnings) {
    const item = document.createElement("li");
    item.textContent = `Scope: ${text}`;
    list.append(item);
  }
  list.hidden = warnings.length === 0;
  if (inScope) $("etiology").after(list);
  else $("scope-notice").append(list);
  $("scope-notice").hidden = inScope;
}

// The reading as the list and its CSV give it: out of scope first, the label kept for a reader who knows better.
function reading(r) {
  return r.in_scope ? nearReading(r) : `out of scope (${r.label})`;
}

// A stage's label, qualified where it lies near that stage's threshold (the first's, or the second's: a second
// stage's "virus" near its threshold was listed and exported as plainly as a clear one).
function nearReading(stage) {
  return stage.near_threshold ? `${stage.label} (near the threshold)` : stage.label;
}

// How a second stage's reading of film reading r stands, the same in the panel, the list and the CSV: "out of scope"
// with the first stage's (it read the same film; its "virus" was listed and exported as a plain call beside a first
// stage out of scope) or by its own content check (its in_scope says both); else "indeterminate" where the first
// stage's call that handed the film over is itself near its threshold: the film may be normal, which a stage trained
// on pneumonia films alone cannot tell, and its "virus" read as a confident etiology of a pneumonia the reading
// itself left undecided; else "" (a reading that stands, qualified only by its own threshold).
function secondStanding(r) {
  if (!r.etiology.in_scope) return "out of scope";
  return r.near_threshold ? "indeterminate" : "";
}

// The result panel's line of the second stage's reading, and its style: grey, and saying why, out of scope or
// indeterminate (secondStanding), as the list and the CSV give it.
function secondLine(r) {
  const e = r.etiology;
  const [why, look] = { "out of scope": ["outside the model's scope, does not apply: ", "out-of-scope"],
    indeterminate: [`indeterminate, since ${r.label} is itself near its threshold: `, "indeterminate"],
    "": ["", ""] }[secondStanding(r)];
  const [p, t] = figuresApart(e.probability, e.threshold);
  return [`${titled(e.task)}: ${why}${e.label} (P(${e.positive}) = ${p}, threshold ${t}` +
    `${e.near_threshold ? ", near the threshold" : ""})`, look];
}

// The second stage's reading of film reading r as the list's CSV gives it: its label, or its label in the words of
// why it does not stand (secondStanding).
function secondReading(r) {
  const standing = secondStanding(r);
  return standing ? `${standing} (${r.etiology.label})` : nearReading(r.etiology);
}

// A reading's scope warnings, then its second stage's own (its content check against that stage's training films),
// named by the stage's task: the panel, the list and the CSV give them all.
function allWarnings(r) {
  const e = r.etiology;
  return e ? [...r.warnings, ...e.warnings.map((w) => `${titled(e.task)} stage: ${w}`)] : r.warnings;
}

// Why a reading is near the threshold, in numbers when the card gives them.
function nearText() {
  const where = thresholdInterval
    ? ` The threshold's 95 % confidence interval runs from ${figure(thresholdInterval[0])} to ` +
      `${figure(thresholdInterval[1])}.` : "";
  return `Too close to the threshold to call: treat as indeterminate.${where}`;
}

// The reading as the result panel says it: a label near the threshold is qualified in its own words, not only
// in the paragraph below.
function labelText(r) {
  return r.in_scope && r.near_threshold ? `${r.label}, near the threshold: indeterminate` : r.label;
}

// A film's reading's style, the same in the panel and the list: red or green only for a clear call; grey out of
// scope, uncoloured near the threshold (a bold red "PNEUMONIA (near the threshold)" in the list looked as sure as
// any), from a model that checks no film's content (noise read PNEUMONIA in bold red; each reading says why), from a
// second-stage model served alone (its "bacteria" in green read as an all-clear; it cannot call a film normal) and
// from a model no card on the page described when it read the film (which of those it is, is not known).
function lookOf(film) {
  const r = film.result;
  const kept = film.readWith;
  if (!r.in_scope) return "out-of-scope";
  if (r.near_threshold || !kept || !kept.contentChecked || kept.followsAnother) return "indeterminate";
  return r.label === r.positive ? "positive" : "negative";
}

// Said in the polite live region when reading r of the film named name arrives or is shown again (kept: the readWith
// of its film, or none), its film's name first, as the film's heading gives it: moving between the films of a batch,
// a screen reader heard readings of no film. The result panel itself is not announced. Out of scope, the label and
// probability are left out (they do not apply, and said aloud they sound as if they did) and the reasons are said,
// as the notice above the reading gives them and as a refusal's reason is said. In scope, the warnings are counted
// (every JPEG has some; they follow the figures), and so are the model's caveats, which the eye finds in the card
// beside the reading and a screen reader only by leaving it.
function announcement(r, name, kept = null) {
  const all = allWarnings(r);
  const film = `Film: ${name}.`;
  if (!r.in_scope) {
    const reasons = all.map((w) => `Scope: ${w}.`).join(" ");
    return `${film} Outside the model's scope: this reading does not apply. ${reasons}`;
  }
  const n = all.length;
  const e = r.etiology;
  const second = !e ? "" : !e.in_scope ? ` ${titled(e.task)}: outside its scope, does not apply.` :
    r.near_threshold ? ` ${titled(e.task)}: indeterminate, since ${r.label} is itself near its threshold.` :
      ` ${titled(e.task)}: ${e.label}.`;
  const c = kept ? kept.caveats : 0;
  const caveats = c ? ` The model card gives ${c} caveat${c === 1 ? "" : "s"}.` : "";
  const [p, t] = figuresApart(r.probability, r.threshold);
  return `${film} Reading: ${labelText(r)}, probability ${p}, threshold ${t}, ` +
    `${n} scope warning${n === 1 ? "" : "s"}.${second}${caveats}`;
}

// The classes of reading r's model when it has more than two (its probabilities, in the model's class order), else
// none: the reading says them, whatever card was loaded since
function classesOf(r) {
  const classes = Object.keys(r.probabilities);
  return classes.length > 2 ? classes : [];
}

// A model of more than two classes labels its first class against the rest at the threshold (normal vs pneumonia):
// each class's probability and the most probable one, a rule of its own that can name another class, are said beside.
function classesText(r) {
  const p = r.probabilities;
  const classes = classesOf(r);
  const top = classes.reduce((best, c) => (p[c] > p[best] ? c : best));
  return `Most probable class: ${top} (${classes.map((c) => `P(${c}) = ${figure(p[c])}`).join(", ")}); the ` +
    `reading is ${classes[0]} vs ${r.positive} at the threshold, not the most probable class.`;
}

// What the heatmap is, said beside it: the overlay's caption (/v1/model's heatmap_caption); and, as the overlay's
// caption says them, the parts of the film the model did not read (unread), a film read as negative (its map is
// still of the evidence for the positive class), an empty map (a map in the lowest colour alone read as one that
// found nothing or failed to draw) and a film outside the model's scope.
function legendText(r, unread, empty) {
  const edges = unread ? " The untinted edges of the film were not read by the model." : "";
  const negative = r.label === r.positive ? "" : ` ${titled(heatmapWords.negative)}.`;
  const read = `${heatmapWords.caption}.${edges}${negative}${empty ? ` ${titled(heatmapWords.empty)}.` : ""}`;
  return r.in_scope !== false ? read : `Outside the model's scope: the reading and this map do not apply. ${read}`;
}

function showFilm(film) {
  const r = film.result;
  const missing = "not recorded";
  const rows = !film.dicom
    ? [["Format", `${film.format}: no DICOM tags (age, sex, view not known)`]]
    : [
      ["Age", r.age_years == null ? missing : `${r.age_years} years`],
      ["Sex", r.sex || missing],
      ["View", r.view || missing],
      ["Modality", r.modality || missing],
      ["Study date", r.study_date || missing],
      ["Study UID", r.study_instance_uid || missing],
    ];
  fillList($("film"), rows);
}

// Where the film shown comes from, when not from the browser's own decode: the service's rendering (image=true) is
// at most 1,024 pixels a side (MAX_PANEL), so zoomed in, a larger film's own pixels are not what is seen.
function sourceCaption(film) {
  return film.result.image
    ? `${film.dicom ? "DICOM film" : "Film"} as decoded by the service (8-bit, at most 1,024 pixels a side).` : "";
}

function showResult(film) {
  const r = film.result;
  lastShown = film;
  // a film read before the service restarted with another bundle or threshold, shown again from the list, was drawn
  // with the card loaded since: another threshold's band, another heatmap scale
  if (cardDigest !== null && !ofTheCard(r)) {
    return showError(`Not shown: ${notOfTheCard(r)}: choose the film again to have it read by the model described`);
  }
  // a reading kept through a reload is shown only once the card proves it this model's
  if (cardDigest === null && !film.file) {
    return showError("Not shown: the model card has not loaded, so the page cannot tell whether this reading, kept " +
      "through a reload, is of the model the service runs: enter the API key if the service asks for one");
  }
  $("error").hidden = true;
  // a film shown again from the list, or the same film again, is said again
  sayAgain($("status"), `${announcement(r, film.name, film.readWith)}${windowSaid(film)}`);
  const look = lookOf(film);
  const [p, t] = figuresApart(r.probability, r.threshold);
  $("label").textContent = labelText(r);
  $("label").className = look;
  $("bar-fill").style.width = pct(r.probability);
  $("bar-fill").className = `fill ${look}`;
  $("bar-threshold").style.left = pct(r.threshold);
  $("bar-band").hidden = !thresholdInterval;
  $("bar-key").hidden = !thresholdInterval;  // without a band the mark is the threshold the numbers below give
  if (thresholdInterval) {
    $("bar-band").style.left = pct(thresholdInterval[0]);
    $("bar-band").style.width = pct(thresholdInterval[1] - thresholdInterval[0]);
    $("key-threshold").textContent = t;
    $("key-band").textContent = `${figure(thresholdInterval[0])} to ${figure(thresholdInterval[1])}`;
  }
  $("near").hidden = !r.near_threshold;
  $("near").textContent = r.near_threshold ? nearText() : "";
  $("bar").setAttribute("aria-valuenow", r.probability.toFixed(4));
  $("bar").setAttribute("aria-valuetext",
    `${labelText(r)}: probability ${p}, threshold ${t}`);
  $("probability").textContent = `P(${r.positive}) = ${p}; threshold ${t}; model ${r.model_id}`;
  $("classes").hidden = classesOf(r).length === 0;
  $("classes").textContent = classesOf(r).length ? classesText(r) : "";
  $("etiology").hidden = !r.etiology;
  if (r.etiology) [$("etiology").textContent, $("etiology").className] = secondLine(r);
  showWarnings(allWarnings(r), r.in_scope);
  showFilm(film);
  $("film-title").textContent = `Film: ${film.name}`;
  $("caption").textContent = sourceCaption(film);
  $("result").hidden = false;
  current = film;
  placeFilm();
  view.cam = null;
  $("heatmap-toggle").checked = false;
  heatControls();
  loadFilm(film);
}

// ---- the viewer: the film's gray levels in memory, drawn through a window/level table, zoom and pan ----

// The longest side, in pixels, of the copy of a film the viewer keeps. Each window/level step recomputes every
// pixel of that copy: kept at full size, a 12,000 px film (1.4e8 pixels, as a CR/DR plate can be) took 0.7-0.9 s a
// step and near 3 GB of the tab's memory; at 2,048 px (4.2e6 pixels) a step takes about 20 ms, fast enough to follow
// a drag, where 4,096 px took 100 ms. The viewer is 700 x 520 pixels: a film fitted to it still gives each of the
// viewer's pixels one of the copy's up to about 4x zoom (a copy at the viewer's own size would blur at the first
// zoom step). Only what is shown is reduced: the file sent to be read, and for its heatmap, is the original; zoomed
// in past the copy's pixels, the part in view is read from the original (drawDetail).
const DISPLAY_MAX = 2048;
// The furthest zoom: 16 times the film fitted to the viewer, and for a reduced film as far on its original's pixels
// as on a film within DISPLAY_MAX (at 16 times its fitted copy, a 12,000 px film's pixels were still smaller than
// the viewer's).
const ZOOM_MAX = 16;
const ZOOM_MIN = 0.25;  // the least: a quarter of the film fitted to the viewer

// The RGBA pixels of an image, or of its rectangle `part` ([x, y, width, height] in its own pixels), drawn at w x h
// (smoothed when resized). The canvas's memory is given back at once, not at the next garbage collection: a
// full-size film's was 4 bytes a pixel.
function pixelsOf(img, w, h, part = [0, 0, img.naturalWidth, img.naturalHeight]) {
  const c = document.createElement("canvas");
  try {
    c.width = w;
    c.height = h;
    const ctx = c.getContext("2d");
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(img, ...part, 0, 0, w, h);
    return ctx.getImageData(0, 0, w, h).data;
  } finally {
    c.width = 0;
    c.height = 0;
  }
}

// Pillow's (ITU-R 601) luma of RGBA pixels, as the service reads a colour file; a grey one keeps its levels exactly
function lumaOf(rgba) {
  const gray = new Uint8ClampedArray(rgba.length / 4);
  for (let i = 0; i < gray.length; i++) {
    gray[i] = (rgba[4 * i] * 19595 + rgba[4 * i + 1] * 38470 + rgba[4 * i + 2] * 7471 + 0x8000) >> 16;
  }
  return gray;
}

function pixelSize(w, h) {
  return `${w.toLocaleString("en")} x ${h.toLocaleString("en")}`;
}

// The film's gray levels, reduced (aspect kept) to at most DISPLAY_MAX pixels a side; a film within it keeps its
// levels exactly.
function grayOf(source) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => {
      try {  // a film too large for the browser's memory throws here: said, rather than never settling
        const scale = Math.min(1, DISPLAY_MAX / Math.max(img.naturalWidth, img.naturalHeight));
        const w = Math.max(1, Math.round(img.naturalWidth * scale));
        const h = Math.max(1, Math.round(img.naturalHeight * scale));
        resolve({ gray: lumaOf(pixelsOf(img, w, h)), w, h, img });
      } catch (err) {
        reject(new Error(`the browser cannot draw this image (${err.message})`));
      }
    };
    img.onerror = () => reject(new Error("the browser cannot display this image"));
    img.src = source;
  });
}

// The zoom and pan of the film in the viewer, kept on it: as it leaves the viewer (loadFilm), and in the session kept
// through a reload (keepSession)
function keepFrame() {
  if (view.film) view.film.frame = { zoom: view.zoom, panX: view.panX, panY: view.panY };
}

// Each film opens fitted the first time it is shown and at the zoom and pan the reader left it at when shown again, as
// its window does (openWindow) and as in a PACS viewer: put back at zoom 1, a finding zoomed in on was lost to a look
// at the next film. The film leaving the viewer keeps its own (keepFrame).
async function loadFilm(film) {
  keepFrame();
  if (view.film !== film) emptyViewer();
  if (!film.file) {  // kept through a reload: its reading, not its pixels (keepSession)
    $("film-pending").hidden = true;
    $("caption").textContent = `The film itself is not kept through a reload of the page: drop ${film.name} again to ` +
      "see it (its reading, viewed mark, window and zoom are kept).";
    return;
  }
  $("film-pending").hidden = view.film === film;  // the same film shown again stays in the viewer while decoded
  const source = film.result.image || URL.createObjectURL(film.file);
  try {
    const { gray, w, h, img } = await grayOf(source);
    if (current !== film) return;
    // a reduced copy keeps its decoded original (the browser's memory, not a copy) for the part in view zoomed in;
    // the film shown before is let go, and the part read from it
    const original = w !== img.naturalWidth || h !== img.naturalHeight ? img : null;
    Object.assign(view, { film, gray, original, w, h, cam: null, zoom: 1, panX: 0, panY: 0, ...film.frame });
    keepInView();  // a viewer resized since holds less of the film
    detail = null;
    if (film.cam) await loadCam(film);
    $("film-pending").hidden = true;
    openWindow();
  } catch (err) {
    if (current !== film) return;  // another film is on screen: its caption is its own
    $("film-pending").hidden = true;
    emptyViewer();  // this film shown again: not its earlier drawing under "cannot be shown"
    $("caption").textContent = `The film cannot be shown: ${err.message}.`;
  } finally {
    if (source.startsWith("blob:")) URL.revokeObjectURL(source);
  }
}

// The viewer without a film: the film shown before stayed in it, with its window readout, under the next film's
// name and reading while that film was decoded, and for good when the browser could not draw it.
function emptyViewer() {
  Object.assign(view, { film: null, gray: null, original: null, cam: null });
  detail = null;
  draw();
  $("readout-wl").textContent = "";
  $("fit-hint").classList.remove("out");
}

// The film's Grad-CAM map (8-bit gray at the heatmap's size) stretched onto the viewer's copy of the film, smoothed
// by the canvas: the copy is the whole film, reduced or not, so the map lies where it was computed. Only while that
// film is the one on screen and in the viewer (the map of a film left while it decoded landed on the next film, at
// that film's size, and its "Show heatmap" drew it there). Where the map is transparent the model did not read the
// film (center-crop's cut-off edges): UNREAD there, and the film is left untinted, not coloured as "no evidence".
// The map is empty, as the overlay's caption says (pneumoscan.inference.explain.overlay_png), where no pixel of the
// film read reaches its first level above 0: judged on the map's own pixels, since stretched onto the film a lone
// pixel at level 1 may be smoothed away.
const UNREAD = -1;
async function loadCam(film) {
  const { img } = await grayOf(film.cam);
  if (current !== film || view.film !== film) return;
  const own = pixelsOf(img, img.naturalWidth, img.naturalHeight);
  film.empty = !own.some((v, i) => i % 4 === 0 && v > 0 && own[i + 3] >= 128);
  const rgba = pixelsOf(img, view.w, view.h);
  view.cam = new Int16Array(view.w * view.h);
  for (let i = 0; i < view.cam.length; i++) view.cam[i] = rgba[4 * i + 3] < 128 ? UNREAD : rgba[4 * i];
  film.unread = view.cam.includes(UNREAD);
}

const VIRIDIS = (() => {
  const lut = new Uint8ClampedArray(256 * 3);
  const n = VIRIDIS_STOPS.length - 1;
  for (let v = 0; v < 256; v++) {
    const x = (v / 255) * n;
    const i = Math.min(n - 1, Math.floor(x));
    const t = x - i;
    for (let k = 0; k < 3; k++) lut[3 * v + k] = VIRIDIS_STOPS[i][k] * (1 - t) + VIRIDIS_STOPS[i + 1][k] * t;
  }
  return lut;
})();

// Pixel operations on the film: gray level -> window/level (-> inverted) -> blended with the coloured map, for the
// viewer's copy; the part of the original in view, when zoomed in past the copy's pixels, goes the same way in draw.
// Only a change of those (window, inversion, map, opacity, another film) calls for it: zoom and pan draw the copy
// made here again (draw), as a pass over a 2,048 px film's pixels is too slow for each step of a pinch.
function compose() {
  if (!view.gray) return;
  const { w, h, level, width } = view;
  if (!composedFrame || composedFrame.width !== w || composedFrame.height !== h) {
    composed.width = w;  // resizing a canvas clears and reallocates it: only for a film of another size
    composed.height = h;
    composedFrame = new ImageData(w, h);
  }
  paint(composedFrame.data, view.gray, $("heatmap-toggle").checked ? view.cam : null);
  composed.getContext("2d").putImageData(composedFrame, 0, 0);
  keepWindow();
  draw();
}

// The window drawn, kept with the film in the viewer (every change of it is composed): the film opens at it when shown
// again (openWindow)
function keepWindow() {
  view.film.window = { preset: $("preset").value, level: view.level, width: view.width, invert: view.invert };
}

function windowWords({ level, width } = view) {
  return `level ${Math.round(level)}, width ${Math.round(width)}`;
}

function zoomWords() {
  return `zoom ${view.zoom.toFixed(2)}x`;
}

// What a key or button did to the viewer, said in its polite region once the keys stop: a held key repeats some 30
// times a second, and each step said would queue them all. A drag is seen as it goes, and not said. (A test of the
// keys shortens the wait: what a key did is what it tests, not how long after it is said.)
let sayAfterMs = 400;
let sayTimer = null;
function sayView(text) {
  clearTimeout(sayTimer);
  sayTimer = setTimeout(() => sayAgain($("view-said"), text), sayAfterMs);
}

// Gray levels into RGBA pixels px through the window/level table, blended with the coloured map where cam gives
// its value at each of those pixels (null: the film alone; UNREAD: the film alone at that pixel).
function paint(px, gray, cam) {
  const lut = new Uint8ClampedArray(256);
  const low = view.level - view.width / 2;
  for (let v = 0; v < 256; v++) {
    const out = Math.round(((v - low) / view.width) * 255);
    lut[v] = view.invert ? 255 - out : out;  // the array clamps to 0..255
  }
  const alpha = Number($("opacity").value) / 100;
  for (let i = 0; i < gray.length; i++) {
    const g = lut[gray[i]];
    let r = g, gr = g, b = g;
    if (cam && cam[i] !== UNREAD) {
      const c = 3 * cam[i];
      r = g * (1 - alpha) + VIRIDIS[c] * alpha;
      gr = g * (1 - alpha) + VIRIDIS[c + 1] * alpha;
      b = g * (1 - alpha) + VIRIDIS[c + 2] * alpha;
    }
    px[4 * i] = r;
    px[4 * i + 1] = gr;
    px[4 * i + 2] = b;
    px[4 * i + 3] = 255;
  }
}

function draw() {
  const canvas = $("view");
  canvas.classList.toggle("empty", !view.gray);  // not printed: an empty viewer printed passes for the film
  const ctx = canvas.getContext("2d");
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (!view.gray) return;
  $("readout-wl").textContent = `${windowWords()}${view.invert ? ", inverted" : ""}` +
    `${$("window-lock").checked ? ", window locked" : ""}, ${zoomWords()}`;
  const scale = shownScale();  // viewer pixels a copy's
  const x = canvas.width / 2 + view.panX - (view.w * scale) / 2;  // where the copy's top left corner lies
  const y = canvas.height / 2 + view.panY - (view.h * scale) / 2;
  // enlarged past one viewer pixel each, a reduced copy's pixels hide what the original's show
  const close = view.original !== null && scale > 1;
  if (view.original && view.film === current) $("caption").textContent = reducedCaption(close);
  $("fit-hint").classList.toggle("out", x < 0 || y < 0 || x + view.w * scale > canvas.width ||
    y + view.h * scale > canvas.height);
  if (close) return drawDetail(ctx, scale, x, y);
  ctx.setTransform(scale, 0, 0, scale, x, y);
  ctx.imageSmoothingEnabled = scale < 2;  // enlarged far, the reader sees the pixels themselves
  ctx.drawImage(composed, 0, 0);
}

// The viewer's pixels a pixel of the film's copy: fitted to the viewer at zoom 1
function shownScale() {
  const canvas = $("view");
  return Math.min(canvas.width / view.w, canvas.height / view.h) * view.zoom;
}

// The least part of the viewer, across and down, that the film covers whatever the pan (the whole film where it is
// smaller): dragged, keyed or pinched out of the viewer, the film left an empty black box and no clue of the way back.
const KEEP_IN_VIEW = 1 / 4;

// The pan held to where the film covers KEEP_IN_VIEW of the viewer, after each pan and zoom
function keepInView() {
  const canvas = $("view");
  const scale = shownScale();
  const most = (side, size) => (side + size) / 2 - Math.min(size, side * KEEP_IN_VIEW);
  const held = (pan, side, size) => Math.max(-most(side, size), Math.min(most(side, size), pan));
  view.panX = held(view.panX, canvas.width, view.w * scale);
  view.panY = held(view.panY, canvas.height, view.h * scale);
}

// A reduced film's caption, true at the zoom shown: the copy's pixels, or, zoomed in past them, the original's.
function reducedCaption(close) {
  const said = sourceCaption(view.film);
  const original = pixelSize(view.original.naturalWidth, view.original.naturalHeight);
  const copy = pixelSize(view.w, view.h);
  const shown = close ? `Shown from the original's own ${original} pixels at this zoom (zoomed out, reduced to ${copy})`
    : `Shown reduced from ${original} to ${copy} pixels (zoomed in past those, from the original's own)`;
  return `${said ? `${said} ` : ""}${shown}; the film read is the original.`;
}

// The part of the original in view, with the copy's top left corner at (x, y) and scale viewer pixels a copy's
// pixel: read from its decoded image at one pixel each, or at the viewer's pixels where the original has more, and
// drawn through the same window/level table and heatmap as the copy. What it holds is bounded by the viewer's size,
// whatever the film's.
function drawDetail(ctx, scale, x, y) {
  const canvas = $("view");
  const img = view.original;
  const kx = img.naturalWidth / view.w;  // the original's pixels across one of the copy's
  const ky = img.naturalHeight / view.h;
  const left = Math.max(0, Math.floor((-x / scale) * kx));  // the original's whole pixels in view
  const top = Math.max(0, Math.floor((-y / scale) * ky));
  const right = Math.min(img.naturalWidth, Math.ceil(((canvas.width - x) / scale) * kx));
  const bottom = Math.min(img.naturalHeight, Math.ceil(((canvas.height - y) / scale) * ky));
  if (right <= left || bottom <= top) return;  // panned off the film
  const part = [left, top, right - left, bottom - top];
  const d = readDetail(part, Math.min(part[2], Math.ceil((part[2] * scale) / kx)),
    Math.min(part[3], Math.ceil((part[3] * scale) / ky)));
  paint(d.frame.data, d.gray, $("heatmap-toggle").checked && view.cam ? detailCam(d, kx, ky) : null);
  if (closeup.width !== d.w || closeup.height !== d.h) {
    closeup.width = d.w;
    closeup.height = d.h;
  }
  closeup.getContext("2d").putImageData(d.frame, 0, 0);
  const sx = (scale * part[2]) / (d.w * kx);  // viewer pixels a pixel of the part read
  const sy = (scale * part[3]) / (d.h * ky);
  ctx.setTransform(sx, 0, 0, sy, x + (left / kx) * scale, y + (top / ky) * scale);
  ctx.imageSmoothingEnabled = sx < 2;  // as for the copy: enlarged far, the original's pixels themselves
  ctx.drawImage(closeup, 0, 0);
}

// The gray levels of the original's rectangle part read at w x h, kept while zoom and pan leave it in view: a
// window/level step repaints them, and only a move reads the decoded image again.
function readDetail(part, w, h) {
  if (!detail || detail.part.join() !== part.join() || detail.w !== w || detail.h !== h) {
    detail = { part, w, h, gray: lumaOf(pixelsOf(view.original, w, h, part)), frame: new ImageData(w, h), cam: null,
      camOf: null };
  }
  return detail;
}

// The heatmap's value at each pixel of the part read: the copy's map where that pixel's centre lies, so the map is
// laid over the original where it lies over the copy.
function detailCam(d, kx, ky) {
  if (d.camOf === view.cam) return d.cam;
  const [left, top, across, down] = d.part;
  const columns = Array.from({ length: d.w }, (_, i) =>
    Math.min(view.w - 1, Math.floor((left + ((i + 0.5) * across) / d.w) / kx)));
  d.cam = new Int16Array(d.w * d.h);
  for (let j = 0; j < d.h; j++) {
    const row = Math.min(view.h - 1, Math.floor((top + ((j + 0.5) * down) / d.h) / ky)) * view.w;
    for (let i = 0; i < d.w; i++) d.cam[j * d.w + i] = view.cam[row + columns[i]];
  }
  d.camOf = view.cam;
  return d.cam;
}

function setWindow(level, width) {
  view.level = Math.max(0, Math.min(255, level));
  view.width = Math.max(1, Math.min(255, width));
  if (PRESETS[$("preset").value] && PRESETS[$("preset").value].join() !== [view.level, view.width].join()) {
    $("preset").value = "custom";
  }
  $("level").value = view.level;
  $("width").value = view.width;
  compose();
}

// The furthest the film zooms in: ZOOM_MAX, on a reduced film's original's pixels
function zoomMost() {
  return ZOOM_MAX * (view.original ? view.original.naturalWidth / view.w : 1);
}

// Zoom from a key, a button or the wheel (a film opens fitted, at 1, the first time it is shown: loadFilm), about the
// viewer's point (x, y) as zoomAt: said, and at either end said to be the end
function setZoom(zoom, x, y) {
  zoomAt(zoom, x, y);
  const end = view.zoom === zoomMost() ? ", the furthest in" : view.zoom === ZOOM_MIN ? ", the furthest out" : "";
  sayView(`${zoomWords()}${end}`);
}

// Every zoom: the viewer's point (x, y) shows the same part of the film before and after, the centre for a key or a
// button, the pointer for the wheel, between the fingers for a pinch (seen as it goes, and not said, as a drag). Zoomed
// about the centre with the pan left as it was, a panned film slid away from the middle of the viewer at each step.
function zoomAt(zoom, x = $("view").width / 2, y = $("view").height / 2) {
  const before = view.zoom;
  view.zoom = Math.max(ZOOM_MIN, Math.min(zoomMost(), zoom));
  const [cx, cy] = [x - $("view").width / 2, y - $("view").height / 2];  // from the viewer's centre
  view.panX = cx - (cx - view.panX) * (view.zoom / before);
  view.panY = cy - (cy - view.panY) * (view.zoom / before);
  keepInView();
  draw();
}

// Whether a drag or an arrow key pans (Pan pressed), rather than changing the window
function panMode() {
  return $("pan-mode").getAttribute("aria-pressed") === "true";
}

function pan(dx, dy) {
  view.panX += dx;
  view.panY += dy;
  keepInView();
  draw();
}

// Each film opens at its own window, as in a PACS viewer: the default the first time it is shown, then the window the
// reader left it at (a film looked at again under the default had lost the window its finding was seen in). A window
// set for one film (a lung band, inverted) is carried to the next only while the reader locks it: carried silently,
// it showed a film at a window the reader never chose for it, which can hide a finding there (windowSaid).
function openWindow() {
  if ($("window-lock").checked) compose();
  else applyWindow(view.film.window || DEFAULT_WINDOW);
}

// The window film opens at (openWindow), said after its reading where it is not the default: whose it is, the lock's or
// the film's own. Said as the film is shown, not once it is decoded, when it took the place of what a key said since
// ("This is the first film with a reading.").
function windowSaid(film) {
  const locked = $("window-lock").checked;
  const w = locked ? view : film.window;
  if (!locked && (!w || (w.preset === "default" && !w.invert))) return "";
  return ` ${locked ? "Window locked" : "This film's window"}: ${windowWords(w)}${w.invert ? ", inverted" : ""}.`;
}

// A window (preset, level, width, inversion) put on the film in the viewer
function applyWindow({ preset, level, width, invert }) {
  $("invert").checked = invert;
  view.invert = invert;
  $("preset").value = preset;
  setWindow(level, width);
}

// The film fitted to the viewer and centred, from its button or the 0 key; the window stays: a reader who zoomed in
// under a window chosen for a finding lost the window to see the whole film again
function fit() {
  Object.assign(view, { zoom: 1, panX: 0, panY: 0 });
  draw();
  sayView(`${zoomWords()}, film centred`);
}

// The default window back (preset, level, width, inversion), from its button or the w key; the zoom and pan stay
function defaultWindow() {
  applyWindow(DEFAULT_WINDOW);
  sayView(`Default window: ${windowWords()}, not inverted.`);
}

$("preset").addEventListener("change", () => setWindow(...PRESETS[$("preset").value]));
$("level").addEventListener("input", () => setWindow(Number($("level").value), view.width));
$("width").addEventListener("input", () => setWindow(view.level, Number($("width").value)));
$("invert").addEventListener("change", () => { view.invert = $("invert").checked; compose(); });
$("window-lock").addEventListener("change", compose);
$("zoom-in").addEventListener("click", () => setZoom(view.zoom * 1.25));
$("zoom-out").addEventListener("click", () => setZoom(view.zoom / 1.25));
$("zoom-fit").addEventListener("click", fit);
$("window-default").addEventListener("click", defaultWindow);
$("pan-mode").addEventListener("click", () => {
  const on = !panMode();
  $("pan-mode").setAttribute("aria-pressed", String(on));
  $("view").classList.toggle("panning", on);
});

// A pointer's drag (a mouse's, a pen's, a finger's): window/level (right = wider, down = brighter level), or pan with
// Shift or in pan mode. Two fingers pinch: apart and together zoom about the point between them, moved together they
// pan (touch-action none: the browser neither scrolls nor zooms the page for them). Each finger is its own pointer:
// taken as one drag, a pinch's two jumped the window between them and never zoomed. A finger left on the film after
// a pinch does nothing until all are lifted, so the end of a pinch does not change the window.
const pointers = new Map();  // pointerId -> [clientX, clientY], for each pointer down on the viewer
let dragging = null;  // {panning} with one pointer down, {pinch: [distance, midpoint]} with two, {done} after a pinch

// The viewer's pixels a CSS pixel (the canvas is drawn at 700 x 520 and shown at the page's width)
function viewerPixels() {
  return $("view").width / $("view").getBoundingClientRect().width;
}

// The viewer's point under the page's point (clientX, clientY)
function viewerPoint(clientX, clientY) {
  const box = $("view").getBoundingClientRect();
  return [(clientX - box.left) * viewerPixels(), (clientY - box.top) * viewerPixels()];
}

// The distance between the first two pointers down, and their midpoint, in CSS pixels
function spread() {
  const [[x1, y1], [x2, y2]] = pointers.values();
  return [Math.hypot(x2 - x1, y2 - y1), [(x1 + x2) / 2, (y1 + y2) / 2]];
}

$("view").addEventListener("pointerdown", (event) => {
  pointers.set(event.pointerId, [event.clientX, event.clientY]);
  $("view").setPointerCapture(event.pointerId);
  // not scrolled into view: a film whose top is off screen moved under the finger that touched it
  $("view").focus({ preventScroll: true });
  if (pointers.size === 1) {
    dragging = { panning: event.shiftKey || panMode() };
  } else if (pointers.size === 2) dragging = { pinch: spread() };
});
$("view").addEventListener("pointermove", (event) => {
  const last = pointers.get(event.pointerId);
  if (!last || !dragging) return;
  pointers.set(event.pointerId, [event.clientX, event.clientY]);
  const k = viewerPixels();
  if (dragging.pinch) {
    const [distance, [x, y]] = spread();
    const [before, [x0, y0]] = dragging.pinch;
    dragging.pinch = [distance, [x, y]];
    view.panX += (x - x0) * k;
    view.panY += (y - y0) * k;
    // fingers that touched down on one point have no spread to scale: this move sets it (a ratio to 0 took the zoom
    // to its furthest in)
    zoomAt(before > 0 ? view.zoom * (distance / before) : view.zoom, ...viewerPoint(x, y));
  } else if (dragging.panning) pan((event.clientX - last[0]) * k, (event.clientY - last[1]) * k);
  else if (!dragging.done) {
    $("preset").value = "custom";
    setWindow(view.level - (event.clientY - last[1]), view.width + (event.clientX - last[0]));
  }
});
for (const type of ["pointerup", "pointercancel"]) {
  $("view").addEventListener(type, (event) => {
    pointers.delete(event.pointerId);
    if (pointers.size === 0) dragging = null;
    else if (dragging && dragging.pinch) dragging = { done: true };
  });
}
$("view").addEventListener("wheel", (event) => {
  event.preventDefault();
  setZoom(view.zoom * (event.deltaY < 0 ? 1.1 : 1 / 1.1), ...viewerPoint(event.clientX, event.clientY));
}, { passive: false });
// A keyboard used shows the keys' help where a touch screen alone hid it (style.css): Tab anywhere, or any key on the
// viewer (a phone's on-screen keyboard, typing the API key, is not one)
document.addEventListener("keydown", (event) => {
  if (event.key === "Tab" || event.target === $("view")) document.documentElement.classList.add("keys");
}, { capture: true });
// The viewer's keys, the same as the help above it (index.html, view-keys). Pan pressed, the arrows pan without Shift
// held, as a drag does: one key at a time for a reader who cannot hold two.
$("view").addEventListener("keydown", (event) => {
  // with Ctrl, Alt or Cmd a key is the browser's (Ctrl + and Ctrl 0 zoom the page, as a low-vision reader does)
  if (event.ctrlKey || event.altKey || event.metaKey) return;
  const step = 8;
  const moves = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
  if (moves[event.key]) {
    const [x, y] = moves[event.key];
    if (event.shiftKey || panMode()) pan(-x * step * 4, -y * step * 4);
    else {
      setWindow(view.level - y * step, view.width + x * step);  // up: darker level as in a drag upwards
      sayView(windowWords());
    }
  } else if (event.key === "+" || event.key === "=") setZoom(view.zoom * 1.25);
  else if (event.key === "-") setZoom(view.zoom / 1.25);
  else if (event.key === "0") fit();
  else if (event.key === "w") defaultWindow();
  else if (event.key === "n" || event.key === "PageDown") moveFilm(1);
  else if (event.key === "p" || event.key === "PageUp") moveFilm(-1);
  else if (event.key === "i") {
    $("invert").checked = !$("invert").checked;
    view.invert = $("invert").checked;
    compose();
    sayView(view.invert ? "inverted" : "not inverted");
  } else if (event.key === "h") toggleHeatmap();
  // out of the viewer without Tab's move to the next control: on a window smaller than the viewer, the arrow keys
  // changed the window while the page could not be scrolled by them; the keys above it say so
  else if (event.key === "Escape") $("view-keys").focus();
  else return;
  event.preventDefault();
});

// The h key: the heatmap shown or hidden as its checkbox does it, or, with none computed, which button computes one
// (a map is computed only when the reader asks)
function toggleHeatmap() {
  if (!heatmapsDrawn) return sayView($("heatmap-off").textContent.replace(/\s+/g, " ").trim());
  // a film kept through a reload has no file to compute one from: its button is disabled (heatControls)
  if (current && !current.file) {
    return sayView(`No heatmap: the film is not kept through a reload of the page: drop ${current.name} again to see ` +
      "it and its heatmap.");
  }
  if ($("heatmap-toggle").disabled) return sayView("No heatmap computed yet: use Compute Grad-CAM heatmap.");
  $("heatmap-toggle").checked = !$("heatmap-toggle").checked;
  heatControls();
  compose();
  sayView($("heatmap-toggle").checked ? "heatmap shown" : "heatmap hidden");
}

// ---- the heatmap: computed only when the reader asks, for the film on screen ----

function heatControls() {
  const have = Boolean(current && current.cam);
  $("heatmap-toggle").disabled = !have;
  $("opacity").disabled = !have;
  $("heatmap-button").disabled = have || !(current && current.file);  // a film kept through a reload: no file to send
  $("legend").hidden = !(have && $("heatmap-toggle").checked);
  $("legend-text").textContent = have ? legendText(current.result, current.unread, current.empty) : "";
  // the second half of the viewer's description, after its keys
  $("view-layer").textContent = have && $("heatmap-toggle").checked
    ? `Grad-CAM heatmap shown over the film in viridis, yellow at ${heatmapWords.spoken}, dark purple lowest. ` +
      $("legend-text").textContent
    : "The film alone.";
}

$("heatmap-button").addEventListener("click", async () => {
  const film = current;
  if (!film) return;
  if (!heatmapWords) {  // a map whose scale the page cannot name would be read as evidence it is not
    return showError("Heatmap not computed: the model card has not loaded, so the page cannot say which scale the " +
      "map is on; enter the API key if the service asks for one, or reload the page", true);
  }
  $("status").textContent = "Computing the heatmap...";
  $("heatmap-button").disabled = true;
  let body = await post(film.file, "heatmap=map");
  // the map of another model than the one that read the film (the service restarted with another bundle) was drawn
  // as this reading's evidence; one of another card of it, under this card's legend (its heatmap scale)
  if (body.ok && body.result.card_digest !== film.result.card_digest) {
    const runs = modelOf(body.result) !== modelOf(film.result) ? `the model ${modelOf(body.result)}, not the model`
      : `the model ${modelOf(body.result)} with another card than the one`;
    body = { ok: false, error: `the service now runs ${runs} that read this film (${modelOf(film.result)}): ` +
      "reload the page and choose the film again" };
  }
  if (body.ok) film.cam = body.result.heatmap;
  // another film (or a refusal) is on screen now: its status and error are not this reply's to change
  if (current !== film) return;
  if (!body.ok) {
    $("heatmap-button").disabled = false;
    $("heatmap-button").focus();
    return showError(`Heatmap not computed: ${body.error}`, true);
  }
  $("status").textContent = "";
  $("error").hidden = true;
  await loadCam(film);  // while the film itself is still being decoded, loadFilm draws its map with it
  if (current !== film) return;
  $("heatmap-toggle").checked = true;
  heatControls();
  compose();
  // what the map is, said once as it appears: the legend beside it is not announced
  $("status").textContent = `Heatmap shown: ${$("legend-text").textContent}`;
  $("heatmap-toggle").focus();  // the button disabled itself: focus would fall to the page's start
});
$("heatmap-toggle").addEventListener("change", () => { heatControls(); compose(); });
$("opacity").addEventListener("input", compose);

function drawLegend() {
  const c = $("legend-bar");
  const ctx = c.getContext("2d");
  for (let x = 0; x < c.width; x++) {
    const v = 3 * Math.round((x / (c.width - 1)) * 255);
    ctx.fillStyle = `rgb(${VIRIDIS[v]}, ${VIRIDIS[v + 1]}, ${VIRIDIS[v + 2]})`;
    ctx.fillRect(x, 0, 1, c.height);
  }
}

// ---- uploads: one request per film, in turn ----

// The longest the page waits for the service's answer to one upload (the proxy read timeout of the nginx example in
// docs/deployment.md): a service that took a film and never answered (a stuck worker, a link dropped without a word)
// left "Analysing..." on screen for ever, and every film chosen after it waiting behind it.
// The model card is waited for as long: a card never answered held the film that loads it first (and every film
// after it) under "Analysing..." for ever.
let answerTimeoutMs = 120_000;

// A request to the service with the key, given up after answerTimeoutMs: its response, or why there is none.
async function ask(url, init = {}) {
  try {
    const signal = AbortSignal.timeout(answerTimeoutMs);
    return { response: await fetch(url, { ...init, headers: authHeaders(), signal }) };
  } catch (err) {
    return { error: err.name === "TimeoutError" ? `no answer from the service within ${answerTimeoutMs / 1000} s`
      : `the server could not be reached: ${err.message}` };
  }
}

async function post(file, query) {
  const form = new FormData();
  form.append("file", file);
  const { response, error } = await ask(`/v1/predict${query ? `?${query}` : ""}`, { method: "POST", body: form });
  if (!response) {
    const unread = error.startsWith("no answer") ? ", so nothing was read: try again, and if this persists, tell " +
      "the administrator" : "";
    return { ok: false, error: error + unread, unread: true };
  }
  // a reading (with the map, when one was asked for): anything else in a 200 is not the service's answer
  const wanted = (b) => typeof b.label === "string" && typeof b.probability === "number" &&
    typeof b.in_scope === "boolean" && (!query.includes("heatmap") || typeof b.heatmap === "string");
  return answerOf(response, "a reading", wanted);
}

// A reply as the service gives it, or why it is not one. A proxy or a sign-on page in front of the service may answer
// in its place: an HTML login page with 200 once a session has expired was taken for a reading, and the page kept
// the previous film's reading on screen under "Analysing..." for ever; a gateway's 502 or 413 page said only its code.
const NOT_THE_SERVICE = ": not an answer of the service (a proxy, gateway or sign-on page in front of it answered " +
  "instead): reload the page, sign in again if asked, and try again; if this persists, tell the administrator";
// A proxy's own 429 (the service's carries its error): a rate limit in front of the service, not a sign-on page
const TOO_MANY = ": the proxy or gateway in front of the service refused the request as one of too many: wait a " +
  "moment and try again; if this persists, tell the administrator";

// The service's refusals of a request, not of its film: no key or a wrong one, too many requests, busy. The film was
// never judged, as when no answer, or another's, came: "not read", not "rejected" (which says the film was refused).
const REQUEST_REFUSED = [401, 403, 429, 503];

async function answerOf(response, what, wanted) {
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    body = null;
  }
  const reply = `HTTP ${response.status} ${response.statusText}`.trim();
  if (!response.ok) {
    const own = body && typeof body.error === "string";
    return { ok: false, error: own ? body.error : reply + (response.status === 429 ? TOO_MANY : NOT_THE_SERVICE),
      unread: !own || REQUEST_REFUSED.includes(response.status) };
  }
  if (body && typeof body === "object" && wanted(body)) return { ok: true, result: body };
  return { ok: false, error: `the reply (${reply}) is not ${what}${NOT_THE_SERVICE}`, unread: true };
}

// What a film is, from its first bytes, as the service tells: a DICOM exported from a PACS often has no extension
// ("IM0001") and so no type in the browser. A DICOM carries "DICM" at byte 128; one without that preamble is read
// as DICOM by the service when it is named *.dcm or sent as application/dicom and its bytes name no other format,
// and so it is here (a PNG named .dcm is a PNG). The browser shows a JPEG or an 8-bit PNG itself, as the model
// reads it; anything else is shown from the service's decode (image=true): a DICOM, a 16-bit PNG (the service
// stretches its values from lowest to highest, the browser keeps the high byte: 12-bit values look black), a PNG
// with an alpha channel (the service refuses one that is not fully opaque, so the film shown is one it read), and a
// PNG or JPEG with colour management the browser applies and the service does not (colourManaged).
async function sniff(file) {
  const named = file.type === "application/dicom" || file.name.toLowerCase().endsWith(".dcm");
  let head;
  try {
    head = new Uint8Array(await file.slice(0, 132).arrayBuffer());
  } catch (err) {
    return { dicom: named, shown: !named, format: claimedBy(file) };  // unreadable here: the upload will say why
  }
  const starts = (bytes, at = 0) => bytes.every((b, i) => head[at + i] === b);
  const jpeg = starts([0xff, 0xd8, 0xff]);
  const png = starts([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  const dicom = !jpeg && !png && (named || starts([0x44, 0x49, 0x43, 0x4d], 128));  // "DICM"
  // IHDR, the first chunk: bit depth at byte 24, colour type at 25 (4: grey + alpha, 6: RGB + alpha)
  const asModelReads = (jpeg && !await jpegColourManaged(file))
    || (png && head[24] <= 8 && head[25] !== 4 && head[25] !== 6 && !await colourManaged(file)
      && !await exifAfterPixels(file));
  return { dicom, shown: asModelReads, format: jpeg || png ? "JPEG/PNG" : claimedBy(file) };
}

// The format of a film with neither a JPEG nor a PNG header, as the service's readers name it: the first whose
// content type or file ending the file has (a site's TIFF reader: "TIFF"), else only that it is no DICOM.
function claimedBy(file) {
  const name = file.name.toLowerCase();
  const reader = filmFormats.find((f) => f.media_types.includes(file.type) || f.suffixes.some((s) => name.endsWith(s)));
  return reader ? reader.formats.join("/") : "Not DICOM";
}

// A PNG whose chunks before its pixels (IDAT) hold an ICC profile (iCCP), chromaticities (cHRM) or a gamma other than
// sRGB's (gAMA 45455): the browser corrects the grey levels by them (a gAMA of 1.0 showed a film 54 levels
// brighter), the service reads the stored values.
async function colourManaged(file) {
  let at = 8;
  for (let n = 0; n < 64 && at + 12 <= file.size; n++) {
    const chunk = new DataView(await file.slice(at, at + 12).arrayBuffer());
    const type = String.fromCharCode(...new Uint8Array(chunk.buffer, 4, 4));
    if (type === "IDAT" || type === "IEND") return false;
    if (type === "iCCP" || type === "cHRM" || (type === "gAMA" && chunk.getUint32(8) !== 45455)) return true;
    at += chunk.getUint32(0) + 12;
  }
  return at + 12 <= file.size;  // 64 chunks and no pixels yet: not read on, the service's decode is shown
}

// A PNG with an orientation chunk (eXIf) after its pixels (IDAT), where the PNG specification allows it: the browser
// reads only one before them, the service honours it wherever it is (the film turned a quarter as the model reads
// it, shown upright under its heatmap, which was stretched over the wrong orientation). The chunks after the pixels
// sit at the file's end, before IEND: its last 1 MB is searched for one whose length fits.
const TAIL_BYTES = 2 ** 20;
async function exifAfterPixels(file) {
  const start = Math.max(8, file.size - TAIL_BYTES);
  const tail = new Uint8Array(await file.slice(start).arrayBuffer());
  const view = new DataView(tail.buffer);
  for (let at = 4; at + 8 <= tail.length; at++) {
    if (tail[at] === 0x65 && tail[at + 1] === 0x58 && tail[at + 2] === 0x49 && tail[at + 3] === 0x66  // "eXIf"
      && at + 8 + view.getUint32(at - 4) <= tail.length) return true;
  }
  return false;
}

// A JPEG whose marker segments before its first scan (SOS) hold an ICC profile (APP2 "ICC_PROFILE"), an Adobe
// APP14 YCCK transform or four components (CMYK): the browser converts its grey levels by them (all of val/NORMAL's
// films carry a profile, drawn 11 to 19 levels off; a gamma-1.0 one 54 brighter), the service reads the stored values.
async function jpegColourManaged(file) {
  const text = (bytes, at, s) => Array.from(s).every((c, i) => bytes[at + i] === c.charCodeAt(0));
  let at = 2;
  for (let n = 0; n < 64 && at + 4 <= file.size; n++) {
    const head = new Uint8Array(await file.slice(at, at + 4).arrayBuffer());
    if (head[0] !== 0xff) return true;  // no marker where one is due: not read on, the service's decode is shown
    if (head[1] === 0xff) { at += 1; continue; }  // a fill byte
    if (head[1] === 0xda || head[1] === 0xd9) return false;  // SOS or EOI: no colour management before the pixels
    const length = (head[2] << 8) | head[3];
    const body = new Uint8Array(await file.slice(at + 4, at + 2 + Math.min(length, 18)).arrayBuffer());
    if (head[1] === 0xe2 && text(body, 0, "ICC_PROFILE\0")) return true;
    if (head[1] === 0xee && text(body, 0, "Adobe") && body[11] === 2) return true;
    // SOFn (not DHT C4, JPG C8, DAC CC): precision, rows, columns, then the number of components
    if (head[1] >= 0xc0 && head[1] <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(head[1]) && body[5] === 4) return true;
    at += 2 + length;
  }
  return at + 4 <= file.size;  // 64 segments and no scan yet: not read on, the service's decode is shown
}

function check(file) {
  if (file.size === 0) return "the file is empty (0 bytes).";
  if (maxUploadBytes !== null && file.size > maxUploadBytes) {
    // the way out, as the service's 413 says it, for a reader who does not run the service
    return `the file is ${mb(file.size)}; the limit is ${mb(maxUploadBytes)}: ask whoever runs the service (serve ` +
      "--max-upload-mb), or send the film losslessly compressed (a DICOM film in a compressed transfer syntax).";
  }
  return null;
}

// A SHA-256 of a file's bytes, in hex: what proves a film dropped again to be the one a reading kept through a
// reload is of (its name does not: two films of two patients may both be IM0001). The SHA-256 of the SHA-256s of its
// slices in turn: the whole file read at once was held in the page's memory twice (the digest copies its input), where
// the upload sends it from the file: 210 MB more at the peak for a 100 MB DICOM, 4 MB without it. null where the
// browser offers no digest (a page served over plain HTTP from another machine: the service's is taken then,
// servicesDigest) or cannot read the file.
const HASHED_SLICE = 4 * 2 ** 20;
// How long a read of the file may give nothing before it is given up (the stream for slices, a slice for the digest:
// null): the reading waits for the digest, and a read that never ended (seen in Chromium, a blob stream under load)
// held the batch at "Analysing..." for good
let digestStallMs = 15000;

// ``promise``, or a rejection once digestStallMs pass without it
function unstalled(promise) {
  let timer;
  const stalled = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error("the file gave no bytes")), digestStallMs);
  });
  return Promise.race([promise, stalled]).finally(() => clearTimeout(timer));
}

async function sha256Of(file) {
  if (!crypto.subtle) return null;
  const digestOf = async (bytes) => new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  try {
    const slices = [];
    for await (const slice of slicesOf(file)) slices.push(await digestOf(slice));
    const digest = await digestOf(await new Blob(slices).arrayBuffer());
    return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
  } catch (err) {
    return null;  // unreadable here: the upload says why
  }
}

// A file's bytes, HASHED_SLICE at a time (the last one shorter), each read into the one buffer the slice before it
// was read into: slices read as buffers of their own were garbage held until collected, 66 MB more at the peak for a
// 100 MB DICOM, 105 MB for 300 MB. A browser whose file streams cannot fill a buffer given has them read so, and so is
// the rest of a file whose stream fails or gives nothing for digestStallMs (a read never ended in Chromium under load)
async function* slicesOf(file) {
  let reader = null, at = 0;  // the bytes given, whole slices
  try {
    reader = file.stream().getReader({ mode: "byob" });
  } catch (err) {
    // no byte stream: read by slices
  }
  if (reader) {
    try {
      let buffer = new ArrayBuffer(HASHED_SLICE);
      for (let done = false; !done;) {
        let filled = 0;
        while (!done && filled < HASHED_SLICE) {
          const read = await unstalled(reader.read(new Uint8Array(buffer, filled, HASHED_SLICE - filled)));
          done = read.done;
          buffer = read.value.buffer;  // the same memory, handed back
          filled += read.value.byteLength;
        }
        if (filled) yield new Uint8Array(buffer, 0, filled);  // digested (copied) before the next read
        at += filled;
      }
      return;
    } catch (err) {
      reader.cancel().catch(() => {});  // not awaited: a stalled stream may never say it is cancelled
    }
  }
  for (; at < file.size; at += HASHED_SLICE) yield await unstalled(file.slice(at, at + HASHED_SLICE).arrayBuffer());
}

// The SHA-256 of the bytes the service read, which its reading names (sha256:HEX), for a page that has no digest of
// its own: never equal to one of the page's (the SHA-256 of its slices' SHA-256s, bare hex), so a session proved one
// way is never matched the other. null where the answer names none that is one (a service older than film_sha256).
function servicesDigest(result) {
  const digest = result.film_sha256;
  return typeof digest === "string" && /^sha256:[0-9a-f]{64}$/.test(digest) ? digest : null;
}

// Why no digest could be had of the films of LIST (film.sha256 null): said, as a film dropped again then can be
// matched to no film kept through a reload, and is listed as new. Over plain HTTP the service's digest comes with its
// reading: a film refused has none, and a reading without one (a service older than film_sha256) was read all the same
function noDigest(list) {
  if (crypto.subtle) return "the browser could not read its file";
  const read = list.filter((film) => film.result).length, one = list.length === 1;
  const why = !read ? `${one ? "it was" : "they were"} not read by the service`
    : read === list.length ? `the service read ${one ? "it" : "them"}, but its reading${one ? "" : "s"} named no ` +
      "fingerprint (film_sha256)"
    : "the service read some of them, its readings naming no fingerprint (film_sha256), and not the others";
  return `${why}, and a page opened over plain HTTP from another computer cannot fingerprint a film itself`;
}

// A film dropped again after a reload takes the place of the film kept without its pixels whose bytes it has (the same
// SHA-256), with its viewed mark, window, zoom and pan; it is read again, so its reading is this model's of these
// bytes. A film of the same name and other bytes is another film, listed as one.
function takeOver(film) {
  const kept = film.sha256 && films.find((f) => !f.file && f.sha256 === film.sha256);
  if (!kept) return;
  Object.assign(film, { viewed: kept.viewed, window: kept.window, frame: kept.frame });
  films.splice(films.indexOf(kept), 1);
  if (lastShown === kept) lastShown = film;
}

// Batches are read one after another, in the order they were chosen: read side by side, an earlier film's late
// reply put its reading (or its refusal) over the film chosen after it, and the reader's last film was not on screen.
let uploads = Promise.resolve();

function analyse(files) {
  const batch = Array.from(files || []).map((file) => ({
    id: films.length + Math.random(), name: file.name, file, dicom: false, shown: true, status: "waiting",
    result: null, error: null, readWith: null, cam: null, unread: false, empty: false,
  }));
  if (!batch.length) return;
  films.push(...batch);
  renderList();
  uploads = uploads.catch(() => {}).then(() => analyseBatch(batch));  // a batch that failed holds up none after it
}

async function analyseBatch(batch) {
  // a key typed after the card was refused, the film dropped with the field still focused: no change event loaded
  // the card, and the reading came without it (no heatmap, "enter the API key" for a key entered)
  if (!heatmapWords) await loadCard();
  const outcome = { read: 0, outside: 0, rejected: 0, unread: 0 };
  chosen = false;  // films chosen anew: shown as they are read
  for (const [n, film] of batch.entries()) {
    $("status").textContent = batch.length > 1 ? `Analysing ${n + 1} of ${batch.length}...` : "Analysing...";
    const problem = check(film.file);
    if (!problem) Object.assign(film, await sniff(film.file));
    film.sha256 = await sha256Of(film.file);
    takeOver(film);
    let body = problem ? { ok: false, error: problem } : await post(film.file, film.shown ? "" : "image=true");
    if (!films.includes(film)) return;  // the session was cleared while the film was read
    if (!film.sha256 && body.ok) {  // no digest of the page's own (plain HTTP): the service's, of what it read
      film.sha256 = servicesDigest(body.result);
      takeOver(film);
    }
    // no card at all: the reading is shown without one (no band, no heatmap), as when the card could not load
    if (body.ok && cardDigest !== null && !ofTheCard(body.result)) body = await withItsCard(body.result);
    film.status = body.ok ? "done" : body.unread ? "unread" : "rejected";
    film.result = body.ok ? body.result : null;
    film.error = body.ok ? null : body.error;
    film.readWith = body.ok ? readWith : null;  // the card of the model that read it, or none (ofTheCard)
    renderList();
    outcome[!body.ok ? film.status : body.result.in_scope ? "read" : "outside"] += 1;
    if (chosen) {
      // the film chosen stays on screen: a lone film's reading is said to be in the list, its refusal beside the film
      if (batch.length === 1 && body.ok) $("status").textContent = `${film.name}: ${listReading(film)}, in the list.`;
      else if (batch.length === 1) showError(`${film.name}: ${titled(listReading(film))}`, true);
      continue;
    }
    if (body.ok) showResult(film);
    else if (batch.length === 1) showError(titled(listReading(film)));
  }
  // the film left on screen is looked at; those the batch passed by are not
  if (current && batch.includes(current)) {
    current.viewed = true;
    renderList();
  }
  if (batch.length > 1) batchSummary(batch.length, outcome);
}

function modelOf(r) {
  return `${r.model_id} ${r.model_version}`;
}

// Whether the card on the page is the one reading r was read with: its model and threshold, and all else the card
// says (a bundle given or rid of its appearance record keeps its weights, and so its id and version, and threshold)
function ofTheCard(r) {
  return r.card_digest === cardDigest;
}

// A reading of another card than the one shown: the service was restarted with another bundle. Its card is loaded
// before the reading is drawn (its threshold's band, its heatmap scale, its colouring); a reading no card matches is
// refused.
async function withItsCard(result) {
  await loadCard();
  if (ofTheCard(result)) return { ok: true, result };
  return { ok: false, error: `${notOfTheCard(result)}: reload the page` };
}

// Why reading r is not drawn with the card on the page: another model or threshold, else another card of them
function notOfTheCard(r) {
  const read = `${modelOf(r)} at threshold ${figure(r.threshold)}`;
  const shown = `${cardModel} at threshold ${figure(cardThreshold)}`;
  if (read !== shown) return `the reading is of the model ${read}, not of the model this page describes (${shown})`;
  return `the reading is of the model ${read} with another card (${r.card_digest}) than the one this page ` +
    `describes (${cardDigest}: its image content check, second stage or upload limit differs)`;
}

// After several films, what became of them: each reading's announcement was overtaken by the next "Analysing",
// and a refusal is only a row of the list. With a refusal it is said as an alert (the error box); the last film of
// the batch read stays on screen, and where none was read no reading stays (it is a film chosen before).
function batchSummary(count, { read, outside, rejected, unread = 0 }) {
  const apart = outside === 1 ? "its reading does not apply" : "their readings do not apply";
  const message = `${count} films: ${read + outside} read` +
    `${outside ? ` (${outside} outside the model's scope: ${apart})` : ""}, ${rejected} rejected` +
    `${unread ? `, ${unread} not read (try again)` : ""}${rejected || unread ? ": see the list" : ""}.`;
  if (!rejected && !unread) {
    $("status").textContent = message;
    return;
  }
  showError(message, read + outside > 0);
}

// ---- the list of films: sortable, exportable ----

// Words in the reader's order: case-insensitive, in the browser's language, the numbers in them by value (by their
// character codes, "PNEUMONIA" sorted before "bacteria", "film10" before "film2", "émile" after "zoe")
const WORDS = new Intl.Collator(undefined, { sensitivity: "base", numeric: true });

// Every column's order: words as WORDS orders them, numbers by value
function compare(x, y) {
  if (typeof x === "string" && typeof y === "string") return WORDS.compare(x, y);
  return x < y ? -1 : x > y ? 1 : 0;
}

// The order of a column of a film's reading (stage: the film's reading of the first stage or of its second, or none;
// group: what names the class a probability is of; measure: the value sorted). Each group's readings by their
// measure among themselves, the groups by name whichever the direction (a P(virus) and a P(PNEUMONIA), or another
// second stage's probability of its own positive class, are not comparable: sorted as one, films read before and
// after a restart with another model were interleaved), and the films without such a reading (not read, rejected, or
// for the second stage not handed over, read with none, not known) last, in the list's order.
function byGroup(a, b, [stage, group, measure], direction) {
  const x = stage(a);
  const y = stage(b);
  if (!x || !y) return !x - !y;
  return compare(group(x), group(y)) || direction * compare(measure(x), measure(y));
}

const firstStage = (film) => film.result;
const oneGroup = () => "";
// the readings in scope before those out of it, whichever the direction: by their words alone, "out of scope
// (NORMAL)" fell between NORMAL and PNEUMONIA
const scopeGroup = (r) => (r.in_scope ? 0 : 1);
// Each column's order but the file name's: [stage, group, measure] of byGroup
const ORDERS = {
  label: [firstStage, scopeGroup, reading],
  probability: [firstStage, (r) => r.positive, (r) => r.probability],
  etiology: [(film) => film.result && film.result.etiology, (e) => e.task, (e) => e.probability],
  warnings: [firstStage, oneGroup, (r) => allWarnings(r).length],
};

// The positive classes of the first stage's readings listed: one, the column's title names it; several (the service
// restarted with a model of another positive class: P(PNEUMONIA), then P(virus) from an etiology model served alone),
// each cell names its own, as the second stage's cells do
function positives() {
  return [...new Set(films.filter((film) => film.result).map((film) => film.result.positive))];
}

// The second stage of the service that read a film ({task, positive}): its reading names it, else the card it was read
// with (a film the first stage did not hand over); null where that card has none, or none had loaded
function stageOf(film) {
  const e = film.result && film.result.etiology;
  if (e) return { task: e.task, positive: e.positive };
  return film.result && film.readWith ? film.readWith.second : null;
}

// The second stages the list and its CSV carry: the card's on the page and those each film was read with, one of each
// task. Taken from the card loaded alone, a restart hid the readings of the stage before, or listed those read with
// none as "not run".
function secondStages() {
  const stages = [readWith && readWith.second, ...films.map(stageOf)].filter(Boolean);
  return stages.filter((stage, i) => stages.findIndex((s) => s.task === stage.task) === i);
}

// The second stage's reading, as the result panel gives it; it runs only on the films the first stage hands over
// (read as pneumonia, for etiology).
function secondText(r) {
  const e = r.etiology;
  if (!e) return "not run";
  const p = probabilityText(e.probability, e.threshold);
  const standing = secondStanding(r);
  if (standing) return `${standing} (${e.label}, P(${e.positive}) = ${p})`;
  return `${e.label} (P(${e.positive}) = ${p}${e.near_threshold ? ", near the threshold" : ""})`;
}

// A film's reading as the list, its CSV and a single film's refusal say it, one source for all: the list said
// "waiting" where the CSV said "waiting: not read yet". A film without a reading is waiting its turn, refused by the
// service (rejected), or never judged (not read: no answer, a request refused, a reply not the service's).
function listReading(film) {
  if (film.result) return reading(film.result);
  if (film.status === "waiting") return "waiting: not read yet";
  return `${film.status === "unread" ? "not read" : "rejected"}: ${film.error}`;
}

function sorted() {
  if (!sortKey) return films.slice();
  const direction = sortAscending ? 1 : -1;
  return films.slice().sort((a, b) => (sortKey === "name" ? direction * compare(a.name, b.name)
    : byGroup(a, b, ORDERS[sortKey], direction)));
}

// A reading's cell in the list's scope warnings column: its warnings but those every film has (common), said above
function warningsCell(r, common) {
  const own = allWarnings(r).filter((w) => !common.includes(w));
  return own.length ? own.join("; ") : common.length ? "none other" : "none";
}

// A film's cell in the list's second-stage column: its own stage's reading, named by its task when the column holds
// those of several; "no second stage" where the service that read it had none, "not known" where no card had loaded
function secondCell(film, named) {
  if (!film.result) return "";
  const stage = stageOf(film);
  if (!stage) return film.readWith ? "no second stage" : "not known";
  return named ? `${titled(stage.task)}: ${secondText(film.result)}` : secondText(film.result);
}

function renderList() {
  $("list").hidden = films.length === 0;
  $("list-summary").textContent = listSummary();
  const common = commonWarnings();
  $("list-common").hidden = !common.length;
  $("list-common").textContent = `Every film with a reading has these scope warnings: ${common.join("; ")}.`;
  placeFilm();
  const stages = secondStages();
  $("etiology-column").hidden = !stages.length;
  $("etiology-column").querySelector("button").textContent =
    stages.length === 1 ? titled(stages[0].task) : "Second stage";
  const classes = positives();
  $("probability-column").querySelector("button").textContent =
    classes.length === 1 ? `Probability of ${classes[0]}` : "Probability";
  for (const th of $("films").querySelectorAll("th[aria-sort]")) {
    const key = th.querySelector("button").dataset.key;
    th.setAttribute("aria-sort", key === sortKey ? (sortAscending ? "ascending" : "descending") : "none");
  }
  const body = $("films").tBodies[0];
  // the film whose Show button has the keyboard's focus: its new button takes it (a reading arriving redraws the
  // list, and focus fell to the page's start)
  const focused = body.contains(document.activeElement) ? document.activeElement.dataset.film : undefined;
  body.replaceChildren();
  for (const film of sorted()) {
    const row = body.insertRow();
    const r = film.result;
    const cells = [
      film.name,
      listReading(film),
      r ? (classes.length > 1 ? `P(${r.positive}) = ` : "") + probabilityText(r.probability, r.threshold) : "",
      ...(stages.length ? [secondCell(film, stages.length > 1)] : []),
      r ? warningsCell(r, common) : "",
    ];
    for (const text of cells) row.insertCell().textContent = text;
    if (r) row.cells[1].className = lookOf(film);
    const show = document.createElement("button");
    show.type = "button";
    show.textContent = "Show";
    show.setAttribute("aria-label", `show ${film.name}`);
    show.disabled = !r;
    show.dataset.film = String(film.id);
    show.addEventListener("click", () => {
      look(film);
      // the reading (or why it is not shown) is above the list: on a phone it was redrawn off screen, and the tap
      // seemed to do nothing; the focus stays on this button
      const shown = $("result").hidden ? $("error") : $("result");
      if (!inView(shown)) shown.scrollIntoView();
    });
    const seen = [film === current ? "on screen" : film.viewed ? "viewed" : "",
      film.file ? "" : "drop the film again to see it"].filter(Boolean).join("; ");
    row.insertCell().append(show, ...(seen ? [" ", seen] : []));
    if (film === current) row.setAttribute("aria-current", "true");
    if (show.dataset.film === focused) show.focus();
  }
  sessionNotice();
  keepSession();
}

// A film's reading shown by the reader's choice: marked viewed in the list and its CSV
function look(film) {
  chosen = true;
  showResult(film);
  film.viewed = true;
  renderList();
}

// The films with a reading, in the list's order: what Previous and Next film move through (a film refused has none
// to show; the list says why)
function readable() {
  return sorted().filter((film) => film.result);
}

// Previous (by -1) or Next film (by 1) from the one last shown, in the list's order; at either end the film stays, and
// that is said. Where the film lies is said after its reading: a screen reader moving through a session heard each
// film's reading and never how far it had come, which the words beside the buttons show the eye.
function moveFilm(by) {
  const list = readable();
  const at = list.indexOf(lastShown);
  const to = at === -1 ? (by > 0 ? 0 : list.length - 1) : at + by;
  if (!list[to]) return sayView(`This is the ${by > 0 ? "last" : "first"} film with a reading.`);
  look(list[to]);
  if (current === list[to]) $("status").textContent += ` ${to + 1} of ${list.length} films with a reading.`;
}

// Where the film on screen lies among the films with a reading, beside Previous and Next film, with its name and
// reading in the list's words: the reading's heading is off screen while the reader looks at the film below it
function placeFilm() {
  const list = readable();
  const at = list.indexOf(current);
  $("film-place").textContent = at === -1 ? ""
    : `${at + 1} of ${list.length} films with a reading: ${current.name}, ${listReading(current)}`;
}

$("previous-film").addEventListener("click", () => moveFilm(-1));
$("next-film").addEventListener("click", () => moveFilm(1));

// The films listed, counted by what became of each: the readings that stand by their label, those near the threshold
// and those outside the model's scope apart, then the films refused, not read and waiting, and the films viewed; a
// kind with no film is left out
function listSummary() {
  const counts = new Map();
  const count = (kind) => counts.set(kind, (counts.get(kind) || 0) + 1);
  for (const film of films) {
    const r = film.result;
    if (!r) count({ rejected: "rejected", unread: "not read" }[film.status] || "waiting");
    else count(!r.in_scope ? "outside the model's scope" : r.near_threshold ? "near the threshold" : r.label);
  }
  const order = ["near the threshold", "outside the model's scope", "rejected", "not read", "waiting"];
  const kinds = [...counts.keys()].sort((a, b) => order.indexOf(a) - order.indexOf(b));
  const withReading = films.filter((film) => film.result);
  const viewed = withReading.filter((film) => film.viewed).length;
  const seen = withReading.length ? `; ${viewed} of the ${withReading.length} with a reading viewed` : "";
  return `${films.length} film${films.length === 1 ? "" : "s"}: ` +
    `${kinds.map((k) => `${counts.get(k)} ${k}`).join(", ")}${seen}.`;
}

// The scope warnings every film with a reading in the list has, where two or more have one: said once above the list
// and left out of each row. Every JPEG has the same ones, which made each row of a list of 35 some five lines tall
// and hid the film with a warning of its own; the panel and the CSV give each film's all.
function commonWarnings() {
  const read = films.filter((film) => film.result);
  if (read.length < 2) return [];
  return allWarnings(read[0].result).filter((w) => read.every((film) => allWarnings(film.result).includes(w)));
}

// Whether the top of element is on screen
function inView(element) {
  const top = element.getBoundingClientRect().top;
  return top >= 0 && top < window.innerHeight;
}

for (const button of $("films").querySelectorAll("th button")) {
  button.addEventListener("click", () => {
    const key = button.dataset.key;
    sortAscending = key === sortKey ? !sortAscending : true;
    sortKey = key;
    renderList();
    // said: the column's sort order (aria-sort) is heard when the keyboard enters the column, not as it changes under
    // the button pressed, and a screen reader heard nothing of the list it had just sorted
    sayAgain($("list-said"), `Sorted by ${button.textContent}, ${sortAscending ? "ascending" : "descending"}.`);
  });
}

// A spreadsheet runs a cell that starts with = + - @ as a formula: file names are written as text.
function csvCell(text) {
  const s = /^[=+\-@\t\r]/.test(text) ? `'${text}` : text;
  return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

// A value as predict's results CSV writes it (Python's csv): a number in full, true/false as True/False, none as empty
function predictCell(v) {
  return v == null ? "" : typeof v === "boolean" ? (v ? "True" : "False") : String(v);
}

// predict's columns of a second stage, named from its task and positive class (pneumoscan.inference.predict.
// stage_fields), and their values in reading r: its own words beside them, and all empty where that stage did not
// read the film (not handed over, or read by a service with another second stage or none)
function stageColumns({ task, positive }, r) {
  const e = r && r.etiology && r.etiology.task === task ? r.etiology : null;
  return [[task, e ? secondReading(r) : ""], [`${task}_probability_${positive}`, e && e.probability],
    [`${task}_label`, e && e.label], [`${task}_threshold`, e && e.threshold],
    [`${task}_near_threshold`, e && e.near_threshold], [`${task}_model_id`, e && e.model_id],
    [`${task}_model_version`, e && e.model_version], [`${task}_warnings`, e && e.warnings.join("; ")],
    [`${task}_in_scope`, e && e.in_scope]];
}

// The list as predict's results give it: predict's columns under its names, in its order, with its values (so one
// reader reads both), and the page's words beside them: `reading` (the list's: out of scope, near the threshold,
// rejected, waiting), `positive`, and the second stage's reading in words under its task's name. `path` is the file's
// name: a browser gives no folder.
function csv() {
  const stages = secondStages();
  // each class of the card's model and of every other that read a film, when more than two, in its order: empty for
  // the readings of the others
  const classes = [...new Set([...(readWith ? readWith.classes : []),
    ...films.flatMap((film) => (film.result ? classesOf(film.result) : []))])];
  const rows = sorted().map((film) => {
    const r = film.result;
    return [["path", film.name], ["reading", listReading(film)], ["probability", r && r.probability],
      ["positive", r && r.positive], ["label", r && r.label], ["threshold", r && r.threshold],
      ["near_threshold", r && r.near_threshold],
      ...classes.map((c) => [CLASS_FIELD + c, r && r.probabilities[c]]),
      ...stages.flatMap((stage) => stageColumns(stage, r)),
      ["error", film.error], ["warnings", r && r.warnings.join("; ")], ["in_scope", r && r.in_scope],
      ["model_id", r && r.model_id], ["model_version", r && r.model_version],
      ["study_instance_uid", r && r.study_instance_uid], ["series_instance_uid", r && r.series_instance_uid],
      ["sop_instance_uid", r && r.sop_instance_uid], ["viewed", Boolean(film.viewed)]];
  });
  const head = rows.length ? rows[0].map(([name]) => name) : [];
  const lines = [head.join(","), ...rows.map((row) => row.map(([, v]) => csvCell(predictCell(v))).join(","))];
  return `${lines.join("\r\n")}\r\n`;
}

// The CSV's rows in no order, under its header: what a save keeps, whichever way the list is sorted
function contentOf(text) {
  const [head, ...rows] = text.split("\r\n");
  return [head, ...rows.sort()].join("\n");
}

// The list's content as its CSV was last saved: the page keeps its readings nowhere but in the tab, and a session's
// were lost without a word when it was closed or reloaded. Compared by content, not by each drawing of the list: a
// sort, which changes no reading, asked again before leaving a list already saved.
let saved = null;
window.addEventListener("beforeunload", (event) => {
  // the browser asks whether to leave, in its own words
  if (films.length && contentOf(csv()) !== saved) event.preventDefault();
});

// The CSV's file name: the time it was saved, in UTC (Z), and the model that read the films, so that sessions sort in
// the order saved and none overwrites another (pneumoscan-readings.csv was every session's). On the reader's clock
// without its offset, the hour the clocks go back sorted out of order and two sites' files could not be put in one
function csvName(now = new Date()) {
  const two = (n) => String(n).padStart(2, "0");
  const time = `${now.getUTCFullYear()}-${two(now.getUTCMonth() + 1)}-${two(now.getUTCDate())}_` +
    `${two(now.getUTCHours())}-${two(now.getUTCMinutes())}-${two(now.getUTCSeconds())}Z`;
  // the model's id and version, each character a file name may not hold (the version's "sha256:") a "-"
  const model = cardModel ? `_${cardModel.replace(/[^\w.-]+/g, "-")}` : "";
  return `pneumoscan-readings_${time}${model}.csv`;
}

$("export").addEventListener("click", () => {
  const text = csv();
  saved = contentOf(text);
  const url = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
  const link = document.createElement("a");
  link.href = url;
  link.download = csvName();
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
});

$("print").addEventListener("click", () => window.print());

// ---- the session through a reload: kept in the tab (sessionStorage), gone with it ----

// A reload (F5, or the browser reloading a tab it set aside) lost every reading not yet saved as CSV. What the page
// needs to show the session again is kept in this tab's sessionStorage, which a reload keeps and closing the tab
// clears (never localStorage or IndexedDB, which outlive it; nothing is sent anywhere): each film's name, the
// SHA-256 of its bytes, its reading or refusal, viewed mark, window, zoom and pan, the list's order, and the CSV last
// saved. Not the films' pixels (a session's films are hundreds of MB, the storage some 5 MB): a film is dropped again
// to be seen (takeOver).
const SESSION_KEY = "pneumoscan-session";
// whether the session could not be kept (the storage full or refused): said, so the reader saves it before reloading
let sessionUnkept = false;

function keepSession() {
  if (!films.length) {
    sessionStorage.removeItem(SESSION_KEY);
    return;
  }
  keepFrame();
  const kept = films.map((film) => ({
    id: film.id, name: film.name, sha256: film.sha256 || null, dicom: film.dicom, format: film.format,
    // a film still waiting has no file after a reload, and will not be read: said as not read
    status: film.status === "waiting" ? "unread" : film.status,
    error: film.status === "waiting" ? "not read before the page was reloaded: drop the film again" : film.error,
    // the service's decode of the film (image) is its pixels: not kept
    result: film.result && { ...film.result, image: null },
    readWith: film.readWith, viewed: Boolean(film.viewed), window: film.window || null, frame: film.frame || null,
  }));
  const shown = lastShown && films.includes(lastShown) ? lastShown.id : null;
  try {
    sessionStorage.setItem(SESSION_KEY, JSON.stringify({ films: kept, sortKey, sortAscending, saved, shown }));
    sessionUnkept = false;
  } catch (err) {
    sessionStorage.removeItem(SESSION_KEY);  // an older state is never shown as this session
    sessionUnkept = true;
    console.warn(`pneumoscan: the session is not kept through a reload: ${err.message}`);
  }
}

// The session kept in this tab, listed again after a reload: the films without their pixels (file null)
function restoreSession() {
  let kept = null;
  try {
    kept = JSON.parse(sessionStorage.getItem(SESSION_KEY));
  } catch (err) {
    sessionStorage.removeItem(SESSION_KEY);  // not this page's: nothing is shown of it
  }
  if (!kept || !Array.isArray(kept.films)) return;
  films.push(...kept.films.map((film) => ({ ...film, file: null, shown: true, cam: null, unread: false,
    empty: false })));
  ({ sortKey, sortAscending, saved } = kept);
  lastShown = films.find((film) => film.id === kept.shown) || null;
  renderList();
  $("status").textContent = $("session-kept").textContent;  // heard as the page opens again
}

// What the session kept through a reload holds and lacks (the films to drop again, by name), and the readings of
// another card than the one on the page (the service restarted with another model since they were made): those are
// not shown as this model's, and the reader may save them (their CSV names the model of each) or clear them.
// A film of which no digest was had (sha256 null) is matched to none: said of those kept and of those dropped while
// kept films wait, never listed as new unsaid.
function sessionNotice() {
  const unseen = films.filter((film) => !film.file);
  const named = (list) => list.map((film) => film.name).join(", ");
  const asNew = (list) => (list.length === 1 ? "a new film" : "new films");
  const its = (list) => (list.length === 1 ? "its" : "their");
  const proved = unseen.filter((film) => film.sha256), unproved = unseen.filter((film) => !film.sha256);
  const kept = unseen.length ? [`Kept from before the page was reloaded: the readings of ${unseen.length} ` +
    `film${unseen.length === 1 ? "" : "s"}, not the films themselves.`,
  proved.length ? `To see a film again, drop it again: ${named(proved)}.` : "",
  unproved.length ? `Dropped again, ${named(unproved)} ${unproved.length === 1 ? "is" : "are"} listed as ` +
    `${asNew(unproved)}: no fingerprint of ${its(unproved)} bytes could be had when ` +
    `${unproved.length === 1 ? "it was" : "they were"} dropped (${noDigest(unproved)}).` : ""].filter(Boolean).join(" ") : "";
  const unmatched = unseen.length ? films.filter((film) => film.file && !film.sha256 && film.status !== "waiting") : [];
  const apart = unmatched.length ? "Not matched to a film kept from before the reload, since no fingerprint of " +
    `${its(unmatched)} bytes could be had (${noDigest(unmatched)}): ${named(unmatched)}; listed as ${asNew(unmatched)}.` : "";
  const unkept = sessionUnkept ? "This session is too large to be kept through a reload in this browser: export " +
    "it as CSV before reloading the page." : "";
  $("session-kept").textContent = [kept, apart, unkept].filter(Boolean).join(" ");
  $("session-kept").hidden = !kept && !unkept;
  const others = cardDigest === null ? [] : films.filter((film) => film.result && !ofTheCard(film.result));
  const models = [...new Set(others.map((film) => modelOf(film.result)))].filter((model) => model !== cardModel);
  const one = others.length === 1;
  const by = models.length ? `the model ${models.join(" and ")}, not by the model this service runs now (${cardModel})`
    : `this model (${cardModel}) under another card than this service's (its content check, second stage, threshold ` +
      "or upload limit differs)";
  const other = others.length ? `${others.length} reading${one ? "" : "s"} of this session ` +
    `${one ? "was" : "were"} made by ${by}: not shown as this model's. Export list as CSV to keep ` +
    `${one ? "it" : "them"} (each row names its model), or Clear session; a film dropped again is read by this model.`
    : "";
  // an alert (index.html): a screen reader heard the kept session in the status line, not that its readings were
  // another model's; set only when it changes, so that it is not heard again each time the list is drawn
  if ($("session-other").textContent !== other) $("session-other").textContent = other;
  $("session-other").hidden = !others.length;
  $("session").hidden = $("session-kept").hidden && $("session-other").hidden;
}

// The session cleared: its films, readings and marks gone from the page and the tab; one not saved since it last
// changed is cleared only once the reader confirms
$("clear-session").addEventListener("click", () => {
  if (contentOf(csv()) !== saved && !window.confirm("Clear this session? Its readings are not saved as CSV: they " +
    "will be lost.")) return;
  films.length = 0;
  current = null;
  lastShown = null;
  saved = null;
  $("result").hidden = true;
  $("error").hidden = true;
  emptyViewer();
  renderList();
  $("file").focus();  // the list, and the button pressed, are gone
  $("status").textContent = "Session cleared: no film or reading of it is kept in this tab.";
});

// kept as the tab is left or set aside, with the zoom and pan of the film in the viewer (the list's changes keep
// it as they come)
window.addEventListener("pagehide", keepSession);
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "hidden") keepSession();
});

$("file").addEventListener("change", () => {
  analyse($("file").files);
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
  analyse(event.dataTransfer.files);
});

async function loadCard() {
  try {
    const { response, error } = await ask("/v1/model");
    if (!response) throw new Error(error);
    const answer = await answerOf(response, "the model card",
      (b) => Array.isArray(b.classes) && typeof b.threshold === "number" && typeof b.card_digest === "string");
    if (!answer.ok) throw new Error(answer.error);
    $("error").hidden = true;
    showCard(answer.result);
  } catch (err) {
    showError(`Could not load the model card: ${err.message}`);
    // the card said "Loading ..." for as long as the page stayed open, beside the refusal
    if (!heatmapWords) fillList($("card"), [["Not loaded", err.message]]);
  }
}

$("api-key").addEventListener("change", loadCard);
drawLegend();
draw();
restoreSession();
loadCard();
