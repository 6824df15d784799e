// The operator page: reads /api/*, listens to /api/events (server-sent events),
// draws its charts as plain SVG. No build step, no dependency.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const DAY_MS = 86400000;

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;  // never innerHTML: site ids are data
  return node;
}

function fmt(value, digits = 2) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

async function getJson(path) {
  const res = await fetch(path, { headers: { Accept: "application/json" } });
  if (!res.ok) throw new Error(`${path}: ${res.status}`);
  return res.json();
}

// Now --------------------------------------------------------------------------
async function loadCommunity() {
  const c = await getJson("/api/community");
  $("community").textContent = c.community;
  $("meta").textContent = `strategy ${c.strategy} · epoch ${c.epoch} · period ${c.period_s} s`;
  const tiles = [
    ["surplus", "surplus kW", fmt(c.cycle ? c.cycle.surplus_kw : c.surplus_kw)],
    ["allocated", "allocated kW", fmt(c.allocated_kw)],
    ["injected", "injected now kW", fmt(c.injected_kw)],
    ["", "grid level", c.grid_level ?? "–"],
    ["", "sites online", `${c.sites_online} / ${c.sites_known}`],
    ["", "degraded", c.sites_degraded],
  ];
  const box = $("tiles");
  box.replaceChildren(...tiles.map(([cls, label, value]) => {
    const t = el("div", { class: `tile ${cls}` });
    t.append(el("b", {}, String(value)), el("span", {}, label));
    return t;
  }));
  const cy = c.cycle;
  $("cycle-line").textContent = cy
    ? `cycle ${cy.cycle}: ${cy.state}${cy.close_reason ? ` (${cy.close_reason})` : ""}, ` +
      `${cy.replies}/${cy.sites} replies, live surplus ${fmt(c.surplus_kw)} kW`
    : "no cycle yet";
}

// Sites ------------------------------------------------------------------------
async function loadSites() {
  const data = await getJson("/api/sites?limit=2000");
  $("sites-count").textContent =
    data.total > data.sites.length ? `(first ${data.sites.length} of ${data.total})` : `(${data.total})`;
  const rows = data.sites.map((s) => {
    const tr = el("tr", { class: s.online ? "" : "offline" });
    const cells = [
      s.site, s.quarantined ? "quarantined" : s.online ? (s.degraded ? "degraded" : "online") : "offline",
      fmt(s.net_export_kw), fmt(s.netload_age_s, 0), s.last_cycle ?? "–", fmt(s.reply_s, 3),
      fmt(s.flex_kw), fmt(s.alloc_kw), s.rank ?? "–",
      s.share_long_run === null ? "–" : `${(100 * s.share_long_run).toFixed(1)} %`,
    ];
    cells.forEach((v, i) => tr.append(el("td", i === 1 && (s.degraded || s.quarantined) ? { class: "degraded" } : {}, String(v))));
    return tr;
  });
  $("sites").tBodies[0].replaceChildren(...rows);
}

// Charts -----------------------------------------------------------------------
const SERIES = [["surplus_kw", "var(--surplus)"], ["allocated_kw", "var(--allocated)"],
                ["injected_kw", "var(--injected)"]];
const MAX_DOTS = 800;  // a week of 15-minute cycles is 672

function drawChart(svg, cycles, fromMs, toMs) {
  const W = svg.clientWidth || 400, H = svg.clientHeight || 180, P = 28;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.replaceChildren();
  const pts = cycles.map((c) => ({ ...c, t: Date.parse(c.cycle) })).filter((c) => c.t >= fromMs && c.t < toMs);
  const top = Math.max(1, ...pts.flatMap((c) => SERIES.map(([k]) => c[k] ?? 0)));
  const x = (t) => P + ((t - fromMs) / (toMs - fromMs)) * (W - P - 4);
  const y = (v) => H - 16 - (v / top) * (H - 24);
  const line = (x1, y1, x2, y2, stroke) => {
    const l = document.createElementNS(SVG, "line");
    Object.entries({ x1, y1, x2, y2, stroke }).forEach(([k, v]) => l.setAttribute(k, v));
    svg.append(l);
  };
  const text = (tx, ty, s, anchor = "start") => {
    const t = document.createElementNS(SVG, "text");
    Object.entries({ x: tx, y: ty, "font-size": 10, fill: "#777", "text-anchor": anchor })
      .forEach(([k, v]) => t.setAttribute(k, v));
    t.textContent = s;
    svg.append(t);
  };
  line(P, y(0), W - 4, y(0), "#ccc");
  text(P - 3, y(top) + 4, fmt(top, 1), "end");
  text(P - 3, y(0) + 4, "0", "end");
  const span = toMs - fromMs;
  const fmtTick = (t) => new Date(t).toLocaleString([], span > DAY_MS
    ? { weekday: "short", day: "numeric" } : { hour: "2-digit", minute: "2-digit" });
  for (let i = 0; i <= 4; i++) text(x(fromMs + (i * span) / 4), H - 3, fmtTick(fromMs + (i * span) / 4), "middle");
  if (!pts.length) { text(W / 2, H / 2, "no cycles", "middle"); return; }
  for (const [key, color] of SERIES) {
    const known = pts.filter((c) => c[key] !== null && c[key] !== undefined);
    if (!known.length) continue;
    const d = known.map((c, i) => `${i ? "L" : "M"}${x(c.t).toFixed(1)},${y(c[key]).toFixed(1)}`).join("");
    const path = document.createElementNS(SVG, "path");
    Object.entries({ d, fill: "none", stroke: color, "stroke-width": 1.5, "data-series": key })
      .forEach(([k, v]) => path.setAttribute(k, v));
    svg.append(path);
    // A dot per cycle (a lone cycle draws no line), its values under the pointer.
    if (known.length > MAX_DOTS) continue;
    for (const c of known) {
      const dot = document.createElementNS(SVG, "circle");
      Object.entries({ cx: x(c.t).toFixed(1), cy: y(c[key]).toFixed(1), r: 2.5, fill: color,
                       "data-series": key, "data-cycle": c.cycle })
        .forEach(([k, v]) => dot.setAttribute(k, v));
      const title = document.createElementNS(SVG, "title");
      title.textContent = `${c.cycle} ${key.replace(/_kw$/, "")} ${fmt(c[key])} kW`;
      dot.append(title);
      svg.append(dot);
    }
  }
}

async function loadCycles() {
  const now = Date.now();
  const since = new Date(now - 7 * DAY_MS).toISOString();
  const data = await getJson(`/api/cycles?since=${encodeURIComponent(since)}`);
  const midnight = new Date(); midnight.setHours(0, 0, 0, 0);
  drawChart($("chart-today"), data.cycles, midnight.getTime(), midnight.getTime() + DAY_MS);
  drawChart($("chart-week"), data.cycles, now - 7 * DAY_MS, now);
  for (const table of ["cycles", "decisions", "reports"]) {
    $(`csv-${table}`).href = `/api/export/${table}.csv?since=${encodeURIComponent(since)}`;
  }
}

// Strategies (shadow) ----------------------------------------------------------
function pct(value) {
  return value === null || value === undefined ? "–" : `${(100 * value).toFixed(1)} %`;
}

async function loadShadow() {
  const now = Date.now();
  const midnight = new Date(); midnight.setHours(0, 0, 0, 0);
  const range = (from) => `since=${encodeURIComponent(new Date(from).toISOString())}` +
    `&until=${encodeURIComponent(new Date(now + DAY_MS).toISOString())}`;
  const [today, week] = await Promise.all([
    getJson(`/api/shadow/summary?${range(midnight.getTime())}`),
    getJson(`/api/shadow/summary?${range(now - 7 * DAY_MS)}`),
  ]);
  $("shadow-off").hidden = week.strategies.length > 0;
  $("shadow-meta").textContent = `(executed: ${week.executed})`;
  const byName = new Map(today.strategies.map((t) => [t.strategy, t]));
  const cells = (t) => t ? [
    pct(t.share), pct(t.usable_share), fmt(t.jain_mean, 3), t.fallbacks,
    `${t.cycles}${t.errors ? ` +${t.errors} err` : ""}${t.skipped ? ` +${t.skipped} skip` : ""}`,
  ] : ["–", "–", "–", "–", "0"];
  const rows = week.strategies.map((w) => {
    const tr = el("tr", { "data-strategy": w.strategy });
    const name = w.executed ? `${w.strategy} (executed)` : w.strategy;
    for (const v of [name, ...cells(byName.get(w.strategy)), ...cells(w)]) {
      tr.append(el("td", {}, String(v)));
    }
    return tr;
  });
  $("shadow-table").tBodies[0].replaceChildren(...rows);
}

// Grid -------------------------------------------------------------------------
async function loadGrid() {
  const g = await getJson("/api/grid");
  $("grid-meta").textContent = `(${g.timezone}; ${g.ecowatt ? "RTE polled" : "RTE off"}` +
    `${g.shed ? `; shed ≥${g.shed_threshold} from ${g.shed.from} until ${g.shed.until}` : ""})`;
  const cells = [el("div", {}, "")];
  for (let h = 0; h < 25; h++) cells.push(el("div", {}, h < 24 ? String(h) : ""));
  for (const day of g.days) {
    cells.push(el("div", { title: day.message || "" }, `${day.day} ${day.day_level ?? ""}`));
    for (let h = 0; h < 25; h++) {
      const hour = day.hours[h];
      if (!hour) { cells.push(el("div")); continue; }
      const cls = [`lv${hour.level ?? "x"}`];
      if (hour.override) cls.push("ovr");
      if (day.day === g.today && h === g.hour) cls.push("now");
      cells.push(el("div", {
        class: cls.join(" "),
        title: `${day.day} ${h}:00 level ${hour.level ?? "unknown"}` +
          (hour.override ? ` (override; RTE ${hour.rte_level ?? "–"})` : ""),
      }, hour.level ?? "·"));
    }
  }
  $("grid-hours").replaceChildren(...cells);
  const form = $("override");
  if (!form.day.value) form.day.value = g.today;
}

$("override").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = ev.target, out = $("override-result");
  sessionStorage.setItem("ems-admin-token", f.token.value);
  const body = { day: f.day.value, hour: Number(f.hour.value), level: f.level.value === "" ? null : Number(f.level.value) };
  const res = await fetch("/api/grid/override", {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${f.token.value}` },
    body: JSON.stringify(body),
  });
  const reply = await res.json().catch(() => ({}));
  out.className = res.ok ? "" : "error";
  out.textContent = res.ok ? "queued" : `${res.status}: ${typeof reply.detail === "string" ? reply.detail : JSON.stringify(reply.detail)}`;
  if (res.ok) setTimeout(() => loadGrid().catch(console.error), 300);
});
$("override").token.value = sessionStorage.getItem("ems-admin-token") || "";

// Live updates -----------------------------------------------------------------
function refresh(...loaders) {
  for (const load of loaders) load().catch((err) => console.error(err));
}

// A cycle may send hundreds of "allocations" bursts: re-read at most once a second.
let pending = null;
function throttled(load) {
  if (pending) return;
  pending = setTimeout(() => { pending = null; refresh(load); }, 1000);
}

function listen() {
  const live = $("live");
  const source = new EventSource("/api/events");
  source.onopen = () => { live.textContent = "live"; live.className = "live"; };
  source.onerror = () => { live.textContent = "reconnecting…"; live.className = "live off"; };
  source.addEventListener("hello", () => refresh(loadCommunity, loadSites, loadCycles, loadGrid, loadShadow));
  source.addEventListener("cycle_opened", () => refresh(loadCommunity));
  source.addEventListener("allocations", () => throttled(loadCommunity));
  source.addEventListener("cycle_closed", () => refresh(loadCommunity, loadSites, loadCycles));
  source.addEventListener("shadow", () => refresh(loadShadow));
  source.addEventListener("grid", () => refresh(loadGrid, loadCommunity));
}

refresh(loadCommunity, loadSites, loadCycles, loadGrid, loadShadow);
listen();
setInterval(() => refresh(loadCommunity), 30000);  // net loads age between cycles
