// lfv-edge live view. Plain JavaScript, no dependencies (served by the package, works offline).
// Data goes into the page through textContent and attributes only, never as HTML.
"use strict";

const MAX_CARDS = 500;
const CHART_WINDOW_S = 30 * 60;
const state = { last: 0, series: [], cards: new Map(), source: null, openSeq: null };

function $(id) { return document.getElementById(id); }

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function percent(fraction, digits) {
  if (fraction === null || fraction === undefined || Number.isNaN(fraction)) return "–";
  if (fraction > 0 && fraction < 0.0001) return "<0.01%";
  return (fraction * 100).toFixed(digits === undefined ? 1 : digits) + "%";
}

function ms(value) {
  if (value === null || value === undefined) return "–";
  return value >= 100 ? Math.round(value) + " ms" : value.toFixed(1) + " ms";
}

function clock(iso) {
  const when = new Date(iso);
  return Number.isNaN(when.getTime()) ? "" : when.toLocaleTimeString();
}

async function getJson(url) {
  const response = await fetch(url, { cache: "no-store" });
  if (!response.ok) throw new Error(url + ": " + response.status);
  return response.json();
}

// --- cards -------------------------------------------------------------------------------

const RESULT_TEXT = { anomalous: "ANOMALY", normal: "NORMAL", error: "ERROR" };

function card(summary, fresh) {
  const result = summary.Result || "error";
  const node = el("article", "card " + result + (fresh ? " fresh" : ""));
  node.tabIndex = 0;
  node.dataset.seq = String(summary.Seq);
  if ((summary.Pictures || []).includes("thumb")) {
    const img = el("img", "thumb");
    img.loading = "lazy";
    img.alt = "inspection " + summary.Seq;
    img.src = "/api/inspections/" + summary.Seq + "/thumb.jpg";
    node.appendChild(img);
  } else {
    node.appendChild(el("div", "nothumb", result === "error" ? "no image" : "no picture kept"));
  }
  const meta = el("div", "meta");
  meta.appendChild(el("span", "badge " + result, RESULT_TEXT[result] || result));
  if (result === "error") {
    meta.appendChild(el("div", "labels", (summary.Error && summary.Error.Code) || "error"));
  } else {
    meta.appendChild(el("span", "conf", percent(summary.Confidence)));
    const labels = el("div", "labels");
    const anomalies = summary.Anomalies || [];
    if (anomalies.length === 0) {
      labels.textContent = summary.HasMask ? "no anomalous pixels" : "";
    }
    anomalies.forEach((anomaly, index) => {
      const swatch = el("span", "swatch");
      swatch.style.backgroundColor = anomaly.Color;  // CSSOM, not an inline style attribute
      labels.appendChild(swatch);
      labels.appendChild(document.createTextNode(
        anomaly.Name + " " + percent(anomaly.Area, 2) + (index < anomalies.length - 1 ? "  " : "")));
    });
    meta.appendChild(labels);
  }
  const total = summary.TimingsMs ? summary.TimingsMs.total : summary.LatencyMs;
  meta.appendChild(el("div", "small",
    [summary.RequestId || "#" + summary.Seq, ms(total), clock(summary.Time)].join(" · ")));
  node.appendChild(meta);
  node.addEventListener("click", () => openDetail(summary.Seq));
  node.addEventListener("keydown", (event) => { if (event.key === "Enter") openDetail(summary.Seq); });
  return node;
}

function addCard(summary, fresh) {
  if (state.cards.has(summary.Seq)) return;
  const grid = $("grid");
  const node = card(summary, fresh);
  grid.insertBefore(node, grid.firstChild);
  state.cards.set(summary.Seq, node);
  state.last = Math.max(state.last, summary.Seq);
  while (state.cards.size > MAX_CARDS) {
    const oldest = Math.min(...state.cards.keys());
    state.cards.get(oldest).remove();
    state.cards.delete(oldest);
  }
  $("empty").hidden = state.cards.size > 0;
  $("count").textContent = "(" + state.cards.size + " shown)";
}

async function loadInspections() {
  const body = await getJson("/api/inspections");
  $("grid").replaceChildren();
  state.cards.clear();
  body.Inspections.slice().reverse().forEach((summary) => addCard(summary, false));
  state.last = body.Last;
  $("empty").hidden = state.cards.size > 0;
}

// --- detail ------------------------------------------------------------------------------

function fact(list, name, value) {
  list.appendChild(el("dt", null, name));
  list.appendChild(el("dd", null, value));
}

async function openDetail(seq) {
  state.openSeq = seq;
  const body = await getJson("/api/inspections/" + seq);
  const summary = body.Summary;
  const pictures = summary.Pictures || [];
  $("detail-title").textContent = "Inspection " + (summary.RequestId || "#" + seq);
  for (const name of ["original", "overlay"]) {
    const img = $("detail-" + name);
    if (pictures.includes(name)) {
      img.src = "/api/inspections/" + seq + "/" + name + ".jpg";
      img.hidden = false;
    } else {
      img.removeAttribute("src");
      img.hidden = true;
    }
  }
  const facts = $("detail-facts");
  facts.replaceChildren();
  fact(facts, "result", RESULT_TEXT[summary.Result] || summary.Result);
  if (summary.Result === "error") {
    fact(facts, "error", (summary.Error.Code || "") + ": " + (summary.Error.Message || ""));
  } else {
    fact(facts, "confidence", percent(summary.Confidence, 2));
    fact(facts, "score / threshold", summary.Score.toFixed(4) + " / " + summary.Threshold.toFixed(4));
    const labels = (summary.Anomalies || []).map((a) => a.Name + " " + percent(a.Area, 2)).join(", ");
    fact(facts, "anomalies (area)", labels || (summary.HasMask ? "none" : "no mask head"));
    const t = summary.TimingsMs;
    fact(facts, "stages", "decode " + ms(t.decode) + " · pre-process " + ms(t.preprocess) +
      " · run " + ms(t.run) + " · post-process " + ms(t.postprocess) + " · total " + ms(t.total));
    fact(facts, "image", summary.ImageSize.Width + " × " + summary.ImageSize.Height);
  }
  fact(facts, "received → published", ms(summary.LatencyMs));
  fact(facts, "source", summary.Source);
  fact(facts, "model", summary.Model.Name + " " + summary.Model.Version);
  fact(facts, "time", summary.Time);
  $("detail-reply").textContent = JSON.stringify(body.Reply, null, 2);
  $("detail").hidden = false;
}

function closeDetail() {
  $("detail").hidden = true;
  state.openSeq = null;
}

// --- status, chart, model ----------------------------------------------------------------

function errorsOf(counters) {
  return Object.values(counters.Errors || {}).reduce((a, b) => a + b, 0);
}

function showStatus(status) {
  const c = status.Counters || {};
  $("c-answered").textContent = c.Answered || 0;
  $("c-anomalous").textContent = c.Anomalous || 0;
  $("c-normal").textContent = c.Normal || 0;
  $("c-errors").textContent = errorsOf(c);
  const verdicts = (c.Anomalous || 0) + (c.Normal || 0);
  $("c-rate").textContent = verdicts ? percent(c.Anomalous / verdicts) : "–";
  const latency = c.LatencyMs;
  $("c-latency").textContent = latency ? Math.round(latency.p50) + " / " + Math.round(latency.p99) : "–";
  $("c-queue").textContent = status.QueueCapacity !== undefined
    ? status.QueueDepth + " / " + status.QueueCapacity : "–";
  const ready = $("ready");
  ready.textContent = status.Ready ? "ready" : "not ready";
  ready.className = "pill " + (status.Ready ? "ok" : "bad");
  ready.title = status.Ready ? "/readyz: ready" : "/readyz: " + (status.NotReady || []).join("; ");
  if (status.Model) $("model-name").textContent = status.Model.Name + " · " + status.Model.Version;
  const transports = $("transports");
  transports.replaceChildren();
  for (const t of status.Transports || []) {
    const item = el("li");
    item.appendChild(el("span", "dot " + (t.Connected ? "ok" : "bad")));
    item.appendChild(document.createTextNode(t.Name + (t.Connected ? " connected" : " disconnected")));
    transports.appendChild(item);
  }
  const sources = status.Sources || [];
  $("sources-panel").hidden = sources.length === 0;
  const list = $("sources");
  list.replaceChildren();
  for (const s of sources) {
    const item = el("li");
    const good = ["running", "ok", "connected", "streaming"].includes(String(s.State).toLowerCase());
    item.appendChild(el("span", "dot " + (good ? "ok" : "bad")));
    const extra = Object.entries(s).filter(([k]) => k !== "Name" && k !== "State")
      .map(([k, v]) => k + " " + (typeof v === "object" ? JSON.stringify(v) : v)).join(" · ");
    item.appendChild(document.createTextNode((s.Name || "source") + ": " + (s.State || "?") +
      (extra ? " (" + extra + ")" : "")));
    list.appendChild(item);
  }
  const now = status.Time || Date.now() / 1000;
  state.series.push([now, c.Answered || 0, c.Anomalous || 0, errorsOf(c)]);
  state.series = state.series.filter((p) => p[0] >= now - CHART_WINDOW_S);
  const recent = state.series.filter((p) => p[0] >= now - 10);
  if (recent.length >= 2) {
    const first = recent[0], last = recent[recent.length - 1];
    const rate = (last[1] - first[1]) / Math.max(last[0] - first[0], 0.001);
    $("c-throughput").textContent = rate.toFixed(1);
  }
  drawChart();
}

function drawChart() {
  const canvas = $("chart");
  const width = canvas.clientWidth || 1200;
  const height = canvas.clientHeight || 150;
  const scale = window.devicePixelRatio || 1;
  if (canvas.width !== Math.round(width * scale)) {
    canvas.width = Math.round(width * scale);
    canvas.height = Math.round(height * scale);
  }
  const g = canvas.getContext("2d");
  g.setTransform(scale, 0, 0, scale, 0, 0);
  g.clearRect(0, 0, width, height);
  const points = [];
  const series = state.series;
  for (let i = 1; i < series.length; i++) {
    const [t0, a0, n0] = series[i - 1];
    const [t1, a1, n1] = series[i];
    if (t1 - t0 < 0.5) continue;
    const answered = a1 - a0;
    points.push({ t: t1, perS: answered / (t1 - t0), rate: answered > 0 ? (n1 - n0) / answered : 0 });
  }
  const now = series.length ? series[series.length - 1][0] : Date.now() / 1000;
  // The window grows with the data (at least 2 minutes) up to 30 minutes.
  const span = series.length ? now - series[0][0] : 0;
  const window_s = Math.min(CHART_WINDOW_S, Math.max(120, span));
  const x = (t) => width * (1 - (now - t) / window_s);
  const top = 8, bottom = height - 16;
  g.strokeStyle = "#e5e7eb";
  g.lineWidth = 1;
  for (const f of [0, 0.5, 1]) {
    const y = bottom - (bottom - top) * f;
    g.beginPath(); g.moveTo(0, y); g.lineTo(width, y); g.stroke();
  }
  g.fillStyle = "rgba(220, 38, 38, 0.55)";
  for (let i = 0; i < points.length; i++) {
    const left = i > 0 ? x(points[i - 1].t) : x(points[i].t) - 3;
    const w = Math.max(x(points[i].t) - left - 1, 1);
    const h = (bottom - top) * points[i].rate;
    g.fillRect(left, bottom - h, w, h);
  }
  const peak = Math.max(1, ...points.map((p) => p.perS));
  g.strokeStyle = "#2563eb";
  g.lineWidth = 2;
  g.beginPath();
  points.forEach((p, i) => {
    const y = bottom - (bottom - top) * (p.perS / peak);
    if (i === 0) g.moveTo(x(p.t), y); else g.lineTo(x(p.t), y);
  });
  g.stroke();
  g.fillStyle = "#6b7280";
  g.font = "11px system-ui, sans-serif";
  g.fillText("100%", 4, top + 10);
  g.fillText(peak.toFixed(1) + "/s", width - 60, top + 10);
  g.fillText("−" + Math.round(window_s / 60) + " min", 4, height - 3);
  g.fillText("now", width - 26, height - 3);
}

async function loadStatus() {
  const status = await getJson("/api/status");
  state.series = (status.Timeline || []).map((p) => p.slice());
  showStatus(status);
}

async function loadModel() {
  const info = await getJson("/api/model");
  $("model-json").textContent = JSON.stringify(info, null, 2);
  const list = $("model-info");
  list.replaceChildren();
  if (info.Models) {
    for (const m of info.Models) fact(list, m.Component || m.Name, (m.Status || "") + " " + (m.Name || "") + " " + (m.Version || ""));
    return;
  }
  const pkg = info.Package || {};
  const input = info.Input || {};
  const seg = info.Segmentation || {};
  const use = info.InUse || {};
  fact(list, "name", pkg.Name);
  fact(list, "version", pkg.Version);
  fact(list, "device", use.Device);
  fact(list, "threshold", use.Threshold !== undefined ? Number(use.Threshold).toFixed(4) : "–");
  fact(list, "input", input.Width + " × " + input.Height);
  fact(list, "heads", [(info.Classification || {}).Enabled ? "classification" : null,
    seg.Enabled ? "segmentation" : null].filter(Boolean).join(" + ") || "–");
  if (seg.Enabled) fact(list, "labels", (seg.Classes || []).map((c) => c.Name).join(", "));
}

// --- the live stream ---------------------------------------------------------------------

function connect() {
  const live = $("live");
  const source = new EventSource("/api/events?after=" + state.last);
  state.source = source;
  source.onopen = () => { live.textContent = "live"; live.className = "pill ok"; };
  source.onerror = () => { live.textContent = "reconnecting"; live.className = "pill warn"; };
  source.addEventListener("inspection", (event) => addCard(JSON.parse(event.data), true));
  source.addEventListener("stats", (event) => showStatus(JSON.parse(event.data)));
  source.addEventListener("reset", () => {
    source.close();
    loadInspections().then(connect, () => setTimeout(connect, 2000));
    loadModel().catch(() => {});
  });
}

async function main() {
  $("detail-close").addEventListener("click", closeDetail);
  $("detail").addEventListener("click", (event) => { if (event.target === $("detail")) closeDetail(); });
  document.addEventListener("keydown", (event) => { if (event.key === "Escape") closeDetail(); });
  window.addEventListener("resize", drawChart);
  try {
    await Promise.all([loadInspections(), loadStatus()]);
  } catch (error) {
    $("live").textContent = "offline";
    $("live").className = "pill bad";
  }
  loadModel().catch(() => { $("model-info").replaceChildren(el("dd", null, "unavailable")); });
  connect();
}

document.addEventListener("DOMContentLoaded", main);
