"""``GET /``: a small self-contained HTML page to browse videos, their plans and contact sheets.

No external resources (no CDN, no fonts): the page talks only to this service's own JSON API.
When the service has a token, open the page as ``/?token=...``; the page sends it along.
``/#video=N&epoch=E`` opens video N's plan and contact sheet directly (links are shareable); ``/``
opens on video 0.
Above the contact sheet, a timeline drawn from the plan JSON alone (``duration_seconds``,
``clip_duration_seconds``, each clip's ``start_seconds`` and ``sampling.max_span_seconds``) shows
where the ρ clips sit in the video and the t_max window their starts must share.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["page"])

INDEX_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>clipserve</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 0; background: #16161a; color: #e6e6e6; }
  header { padding: 10px 16px; background: #222228; border-bottom: 1px solid #333; }
  header h1 { font-size: 18px; margin: 0 12px 0 0; display: inline; }
  #summary { color: #aaa; }
  main { display: flex; height: calc(100vh - 46px); }
  #sidebar { width: 360px; overflow-y: auto; border-right: 1px solid #333; }
  #video-list { list-style: none; margin: 0; padding: 0; }
  #video-list li { padding: 6px 12px; cursor: pointer; border-bottom: 1px solid #26262c; }
  #video-list li:hover { background: #2a2a32; }
  #video-list li.selected { background: #33415c; }
  #video-list .meta { color: #999; font-size: 12px; }
  #pager { padding: 8px 12px; display: flex; gap: 8px; align-items: center; }
  #detail { flex: 1; overflow: auto; padding: 12px 16px; }
  #controls label { margin-right: 12px; }
  #controls input { width: 90px; background: #222; color: #eee; border: 1px solid #444; padding: 2px 4px; }
  button { background: #33415c; color: #eee; border: 1px solid #4a5a7c; padding: 3px 10px; cursor: pointer; }
  [hidden] { display: none !important; }  /* an element's display rule must not unhide it */
  #sheet { display: block; margin: 12px 0; max-width: 100%; image-rendering: pixelated; }
  pre { background: #0e0e12; padding: 10px; overflow: auto; max-height: 50vh; font-size: 12px; }
  .error { color: #ff8080; }
  #timeline { margin: 12px 0 4px; max-width: 900px; }
  #timeline-title { color: #e6e6e6; }
  #timeline-tmax { color: #beaa50; font-size: 12px; margin-bottom: 4px; }
  .tl-row { display: flex; align-items: center; margin: 3px 0; }
  .tl-label { width: 56px; flex: none; font-size: 12px; color: #999; }
  .tl-track { position: relative; flex: 1; height: 12px; background: #28282f; }
  .tl-video { height: 8px; background: #60606c; }
  .tl-axis { position: relative; flex: 1; height: 16px; font-size: 11px; color: #999; }
  .tl-tick { position: absolute; top: 0; border-left: 1px solid #777; height: 4px; }
  .tl-tick span { position: absolute; top: 3px; left: -3px; white-space: nowrap; }
  .tmax-window { position: absolute; top: -2px; bottom: -2px; background: #3e3a1e;
                 border-left: 1px solid #beaa50; border-right: 1px solid #beaa50; box-sizing: border-box; min-width: 2px; }
  .clip-interval { position: absolute; top: 0; bottom: 0; min-width: 2px; }
</style>
</head>
<body>
<header><h1>clipserve</h1><span id="summary">loading…</span></header>
<main>
  <nav id="sidebar">
    <div id="pager">
      <button id="prev" type="button">◀</button><span id="page-label"></span><button id="next" type="button">▶</button>
    </div>
    <ul id="video-list"></ul>
  </nav>
  <section id="detail">
    <div id="controls">
      <strong id="title">pick a video</strong><br>
      <label>epoch <input id="epoch" type="number" min="0" value="0"></label>
      <label>seed <input id="seed" type="number" min="0"></label>
      <button id="show" type="button">show</button>
      <span id="status"></span>
    </div>
    <div id="timeline" hidden>
      <div id="timeline-title"></div>
      <div id="timeline-tmax"></div>
      <div class="tl-row"><span class="tl-label">video</span><div class="tl-track tl-video" id="timeline-video"></div></div>
      <div id="timeline-lanes"></div>
      <div class="tl-row"><span class="tl-label"></span><div class="tl-axis" id="timeline-axis"></div></div>
    </div>
    <img id="sheet" alt="contact sheet: one row per clip" hidden>
    <h3>plan</h3>
    <pre id="plan"></pre>
    <h3>index record</h3>
    <pre id="record"></pre>
  </section>
</main>
<script>
"use strict";
const PAGE_SIZE = 100;
const token = new URLSearchParams(window.location.search).get("token");
const headers = token ? {"Authorization": "Bearer " + token} : {};
let offset = 0, total = 0, selected = null;

function withToken(url) {
  return token ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : url;
}
async function getJSON(url) {
  const response = await fetch(url, {headers});
  const body = await response.json();
  if (!response.ok) throw new Error(typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail));
  return body;
}
function setStatus(text, isError) {
  const el = document.getElementById("status");
  el.textContent = text;
  el.className = isError ? "error" : "";
}
async function loadInfo() {
  try {
    const info = await getJSON("/v1/info");
    const s = info.sampling, a = info.augment;
    document.getElementById("summary").textContent =
      info.num_videos + " videos · backend " + info.backend + " · ρ=" + s.num_clips +
      (s.spatial_crops > 1 ? " × " + s.spatial_crops + " crops (" + s.temporal_sampling + ")" : "") + " T=" + s.frames_per_clip +
      " τ=" + s.frame_stride + " · " + a.crop_size_pixels + " px · batch " + info.batch_layout.batch_size;
    document.getElementById("seed").value = info.config.seed;
  } catch (err) {
    document.getElementById("summary").textContent = "info failed: " + err.message;
  }
}
async function loadPage() {
  const list = document.getElementById("video-list");
  try {
    const page = await getJSON("/v1/videos?offset=" + offset + "&limit=" + PAGE_SIZE);
    total = page.total;
    list.replaceChildren();
    for (const v of page.items) {
      const li = document.createElement("li");
      li.dataset.index = v.video_index;
      const name = document.createElement("div");
      name.className = "path";
      name.textContent = v.video_index + ": " + v.relative_path;
      const meta = document.createElement("div");
      meta.className = "meta";
      meta.textContent = v.label_name + " · " + v.duration_seconds.toFixed(2) + " s · " +
        v.width_pixels + "×" + v.height_pixels + " · " + v.codec;
      li.append(name, meta);
      li.addEventListener("click", () => select(v.video_index));
      list.append(li);
    }
    document.getElementById("page-label").textContent =
      total ? (offset + 1) + "–" + Math.min(offset + PAGE_SIZE, total) + " of " + total : "no videos";
  } catch (err) {
    list.replaceChildren();
    const li = document.createElement("li");
    li.className = "error";
    li.textContent = "could not list videos: " + err.message;
    list.append(li);
  }
}
async function select(index) {
  selected = index;
  for (const li of document.querySelectorAll("#video-list li")) {
    li.classList.toggle("selected", Number(li.dataset.index) === index);
  }
  await show();
}
// One colour per clip, as the contact sheet's timeline (clipserve/inspect/render.py CLIP_COLORS).
const CLIP_COLORS = ["rgb(86,180,233)", "rgb(230,159,0)", "rgb(0,158,115)", "rgb(240,228,66)",
                     "rgb(0,114,178)", "rgb(213,94,0)", "rgb(204,121,167)", "rgb(220,220,220)"];
function timelineDuration(plan) {
  if (plan.duration_seconds > 0) return plan.duration_seconds;
  return Math.max(1e-3, ...plan.clips.map(c => c.start_seconds + plan.clip_duration_seconds));
}
function tMaxWindow(plan, duration) {
  // [a, a + t_max] holding every clip start (from the earliest, moved left if it passes the last
  // possible start); global sampling: every possible start. Same rule as the contact sheet.
  const lastStart = Math.max(0, duration - plan.clip_duration_seconds);
  const tMax = plan.sampling.max_span_seconds;
  if (tMax === null || tMax === undefined) return [0, lastStart];
  const earliest = Math.min(...plan.clips.map(c => c.start_seconds));
  const left = Math.max(0, Math.min(earliest, lastStart - tMax));
  return [left, left + tMax];
}
// How each temporal_sampling mode placed the starts: caption and shaded window (render.py START_RULES).
const START_RULES = {
  random(plan, duration) {
    const [left, right] = tMaxWindow(plan, duration);
    const tMax = plan.sampling.max_span_seconds;
    if (tMax === null || tMax === undefined) {
      return {window: [left, right], caption: "t_max global: " + (plan.clips.length === 1 ? "the clip" : "a clip") +
              " may start anywhere in 0.00–" + right.toFixed(2) + " s (shaded)"};
    }
    return {window: [left, right], caption: "t_max " + tMax.toFixed(2) + " s: every clip starts in " +
            left.toFixed(2) + "–" + right.toFixed(2) + " s (shaded)"};
  },
  centre(plan, duration) {
    const lastStart = Math.max(0, duration - plan.clip_duration_seconds);
    const k = plan.sampling.num_clips;  // clips, not views: with spatial crops a clip is S rows
    const placed = k === 1 ? "the clip starts at the middle" : "clip c starts at (c + 1/2)/" + k;
    return {window: [0, lastStart], caption: "centre sampling, nothing drawn: " + placed +
            " of the start range 0.00–" + lastStart.toFixed(2) + " s (shaded)"};
  },
  uniform(plan, duration) {
    const lastStart = Math.max(0, duration - plan.clip_duration_seconds);
    const k = plan.sampling.num_clips, crops = plan.sampling.spatial_crops || 1;
    return {window: [0, lastStart], caption: "multi-view test, nothing drawn: " + k + (k === 1 ? " clip" : " clips") +
            " evenly spaced, clip k starts at k/" + k + " of 0.00–" + lastStart.toFixed(2) + " s (shaded)" +
            (crops > 1 ? ", " + crops + " crops each: " + (k * crops) + " views" : "")};
  },
};
function startRule(plan, duration) {
  const rule = START_RULES[plan.sampling.temporal_sampling];
  if (rule) return rule(plan, duration);
  const lastStart = Math.max(0, duration - plan.clip_duration_seconds);  // render.py start_rule's fallback
  return {window: [0, lastStart], caption: plan.sampling.temporal_sampling + " sampling: starts within 0.00–" +
          lastStart.toFixed(2) + " s (shaded)"};
}
function tickStep(duration) {
  for (const step of [0.1, 0.2, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600]) {
    if (duration / step <= 8) return step;
  }
  return duration / 8;
}
function span(className, startSeconds, endSeconds, duration) {
  const pct = t => 100 * Math.min(Math.max(t / duration, 0), 1);
  const el = document.createElement("div");
  el.className = className;
  el.dataset.startSeconds = startSeconds;
  el.dataset.endSeconds = endSeconds;
  el.style.left = pct(startSeconds).toFixed(3) + "%";
  el.style.width = (pct(endSeconds) - pct(startSeconds)).toFixed(3) + "%";
  return el;
}
function drawTimeline(plan) {
  const duration = timelineDuration(plan);
  const rule = startRule(plan, duration);
  const [wLeft, wRight] = rule.window;
  const starts = plan.clips.map(c => c.start_seconds);
  const box = document.getElementById("timeline");
  box.dataset.durationSeconds = duration;
  document.getElementById("timeline-title").textContent = "timeline: video " + duration.toFixed(2) + " s · " +
    plan.clips.length + (plan.clips.length === 1 ? " clip of " : " clips of ") +
    plan.clip_duration_seconds.toFixed(2) + " s · " + (starts.length > 1
      ? "starts span " + (Math.max(...starts) - Math.min(...starts)).toFixed(2) + " s"
      : "starts at " + starts[0].toFixed(2) + " s");
  document.getElementById("timeline-tmax").textContent = rule.caption;
  const lanes = document.getElementById("timeline-lanes");
  lanes.replaceChildren();
  plan.clips.forEach((clip, c) => {
    const row = document.createElement("div");
    row.className = "tl-row";
    const label = document.createElement("span");
    label.className = "tl-label";
    label.textContent = "clip " + clip.clip_index;
    label.style.color = CLIP_COLORS[c % CLIP_COLORS.length];
    const track = document.createElement("div");
    track.className = "tl-track";
    track.append(span("tmax-window", wLeft, wRight, duration));
    const end = clip.start_seconds + plan.clip_duration_seconds;
    const interval = span("clip-interval", clip.start_seconds, end, duration);
    interval.dataset.clip = clip.clip_index;
    interval.style.background = CLIP_COLORS[c % CLIP_COLORS.length];
    interval.title = "clip " + clip.clip_index + ": [" + clip.start_seconds.toFixed(2) + ", " + end.toFixed(2) + ") s";
    track.append(interval);
    row.append(label, track);
    lanes.append(row);
  });
  const axis = document.getElementById("timeline-axis");
  axis.replaceChildren();
  const step = tickStep(duration);
  for (let k = 0; k * step <= duration + 1e-9; k++) {
    const tick = document.createElement("div");
    tick.className = "tl-tick";
    tick.style.left = (100 * k * step / duration).toFixed(3) + "%";
    const text = document.createElement("span");
    text.textContent = Number((k * step).toFixed(2)) + " s";
    tick.append(text);
    axis.append(tick);
  }
  box.hidden = false;
}
async function show() {
  if (selected === null) return;
  const epoch = document.getElementById("epoch").value || "0";
  const seed = document.getElementById("seed").value;
  const query = "?epoch=" + encodeURIComponent(epoch) + (seed !== "" ? "&seed=" + encodeURIComponent(seed) : "");
  document.getElementById("title").textContent = "video " + selected;
  setStatus("loading…", false);
  try {
    const [plan, record] = await Promise.all([
      getJSON("/v1/videos/" + selected + "/plan" + query),
      getJSON("/v1/videos/" + selected),
    ]);
    document.getElementById("title").textContent = "video " + selected + ": " + record.record.relative_path;
    document.getElementById("plan").textContent = JSON.stringify(plan, null, 1);
    drawTimeline(plan);
    const rec = Object.assign({}, record.record);
    if (rec.frame_timestamps_seconds && rec.frame_timestamps_seconds.length > 12) {
      rec.frame_timestamps_seconds = rec.frame_timestamps_seconds.slice(0, 12).concat(["…"]);
    }
    document.getElementById("record").textContent = JSON.stringify(rec, null, 1);
    const img = document.getElementById("sheet");
    img.onload = () => { img.hidden = false; setStatus("", false); };
    img.onerror = () => { img.hidden = true; setStatus("contact sheet failed (see the server log)", true); };
    history.replaceState(null, "", "#video=" + selected + "&epoch=" + encodeURIComponent(epoch));
    img.src = withToken("/v1/videos/" + selected + "/clips.png" + query);
  } catch (err) {
    setStatus(err.message, true);
  }
}
document.getElementById("prev").addEventListener("click", () => { offset = Math.max(0, offset - PAGE_SIZE); loadPage(); });
document.getElementById("next").addEventListener("click", () => { if (offset + PAGE_SIZE < total) { offset += PAGE_SIZE; loadPage(); } });
document.getElementById("show").addEventListener("click", show);
document.getElementById("epoch").addEventListener("change", show);
function fromHash() {
  const params = new URLSearchParams(window.location.hash.slice(1));
  const video = params.get("video");
  if (params.get("epoch") !== null) document.getElementById("epoch").value = params.get("epoch");
  if (video !== null && /^[0-9]+$/.test(video)) {
    offset = Math.floor(Number(video) / PAGE_SIZE) * PAGE_SIZE;
    return Number(video);
  }
  return null;
}
const initial = fromHash();
// Open on the video of the #fragment, else on the first one (no empty boxes); no videos: say so.
loadInfo().then(loadPage).then(() => {
  if (initial !== null) select(initial);
  else if (total > 0) select(offset);
  else document.getElementById("title").textContent = "no videos in this index";
});
</script>
</body>
</html>
"""


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def index_page() -> HTMLResponse:
    """The browsing page (static; its script calls the JSON API)."""
    return HTMLResponse(INDEX_HTML)
