"""``GET /``: a small self-contained HTML page to browse videos, their plans and contact sheets.

No external resources (no CDN, no fonts): the page talks only to this service's own JSON API.
When the service has a token, open the page as ``/?token=...``; the page sends it along.
``/#video=N&epoch=E`` opens video N's plan and contact sheet directly (links are shareable).
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
  #sheet { display: block; margin: 12px 0; max-width: 100%; image-rendering: pixelated; }
  pre { background: #0e0e12; padding: 10px; overflow: auto; max-height: 50vh; font-size: 12px; }
  .error { color: #ff8080; }
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
      info.num_videos + " videos · backend " + info.backend + " · ρ=" + s.num_clips + " T=" + s.frames_per_clip +
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
loadInfo().then(loadPage).then(() => { if (initial !== null) select(initial); });
</script>
</body>
</html>
"""


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def index_page() -> HTMLResponse:
    """The browsing page (static; its script calls the JSON API)."""
    return HTMLResponse(INDEX_HTML)
