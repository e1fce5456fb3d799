// The steer playground: pick runs, set each run's m, stream completions at -m, 0 and +m through the
// server's own /v1/chat/completions, and draw each run's swept means and fitted curves
// (/playground/curves) with the current m marked. Plain JavaScript, no dependencies.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const KINDS = { pref: "PrefOdds", util: "UtilOdds" };
const CACHE_SIZE = 200;

const state = {
  base: null, // the base model's name (served at m = 0)
  runs: [], // /v1/models entries of the runs
  selected: [], // names of the selected runs, in the order they were picked
  m: {}, // run name -> m
  curves: {}, // run name -> /playground/curves payload (or {error})
  controller: null, // aborts the completions of the current Run
  cache: new Map(), // request body (JSON) -> finished text
  ran: false, // a Run has happened: later m changes re-run when "live" is checked
  timer: null,
};

const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------------ numbers

function niceStep(span, parts) {
  const raw = span / parts;
  const power = 10 ** Math.floor(Math.log10(raw));
  const unit = [1, 2, 5, 10].find((u) => u * power >= raw) || 10;
  return unit * power;
}

function decimals(step) {
  const text = String(step);
  return text.includes(".") ? text.split(".")[1].length : 0;
}

function roundTo(value, step) {
  const rounded = Number((Math.round(value / step) * step).toFixed(decimals(step)));
  return rounded === 0 ? 0 : rounded; // no -0
}

function fmt(value, digits = 2) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "—";
  const text = Number(value.toFixed(digits)).toString();
  return text.replace("-", "−");
}

function signed(value) {
  return value > 0 ? `+${fmt(value, 4)}` : fmt(value, 4);
}

function interpolate(xs, ys, x) {
  let last = null;
  for (let i = 0; i < xs.length; i++) {
    if (ys[i] === null) continue;
    if (xs[i] === x) return ys[i];
    if (xs[i] > x) {
      if (last === null) return null;
      const t = (x - xs[last]) / (xs[i] - xs[last]);
      return ys[last] + t * (ys[i] - ys[last]);
    }
    last = i;
  }
  return null;
}

// ------------------------------------------------------------------ server

async function errorText(response) {
  const raw = await response.text();
  let message = raw.slice(0, 500) || response.statusText;
  try {
    const body = JSON.parse(raw);
    message = (body.error && body.error.message) || body.detail || message;
  } catch (_) {
    // not JSON: the raw text is the message
  }
  return `HTTP ${response.status}: ${message}`;
}

async function getJSON(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(await errorText(response));
  return response.json();
}

// Streams one chat completion (server-sent events); onText gets each piece of text.
async function streamChat(body, signal, onText) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ ...body, stream: true }),
    signal,
  });
  if (!response.ok) throw new Error(await errorText(response));
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let finish = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return finish;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(`server error: ${chunk.error.message}`);
        const choice = chunk.choices && chunk.choices[0];
        if (!choice) continue;
        if (choice.delta && choice.delta.content) onText(choice.delta.content);
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
  }
  if (finish === null) throw new Error("the stream ended before the completion did");
  return finish;
}

// ------------------------------------------------------------------ settings

function runInfo(name) {
  return state.runs.find((run) => run.id === name);
}

function numberField(id) {
  const text = $(id).value.trim();
  return text === "" ? undefined : Number(text);
}

function sampling() {
  const options = {};
  for (const [key, id] of [["max_tokens", "max-tokens"], ["temperature", "temperature"], ["seed", "seed"]]) {
    const value = numberField(id);
    if (value !== undefined) options[key] = value;
  }
  return options;
}

function messages() {
  return [{ role: "user", content: $("prompt").value }];
}

// The m of one column: a number (one run) or {run: m} (several), scaled by sign.
function scaled(sign) {
  if (state.selected.length === 1) return roundTo(sign * state.m[state.selected[0]], 1e-6);
  return Object.fromEntries(state.selected.map((name) => [name, roundTo(sign * state.m[name], 1e-6)]));
}

function columnLabel(m) {
  if (typeof m === "number") return `m = ${signed(m)}`;
  return Object.entries(m)
    .map(([name, value]) => `${shortName(name)} ${signed(value)}`)
    .join(" · ");
}

function shortName(name) {
  const parts = name.split("/");
  return parts.length > 2 ? parts.slice(-2).join("/") : name;
}

// The columns of a Run: the base model, and -m and +m when some m is not zero.
function columns() {
  const request = (model, m) => ({ model, messages: messages(), ...(m === undefined ? {} : { m }), ...sampling() });
  const base = { key: "base", label: "base model · m = 0", m: 0, body: request(state.base) };
  const steered = state.selected.some((name) => state.m[name] !== 0);
  if (!steered) return [base];
  const column = (sign) => {
    const m = scaled(sign);
    return { key: sign < 0 ? "minus" : "plus", label: columnLabel(m), m, body: request(state.selected[0], m) };
  };
  const [low, high] = [column(-1), column(1)];
  // one run: order by the value of m; several: -m first
  const swap = state.selected.length === 1 && low.m > high.m;
  return swap ? [high, base, low] : [low, base, high];
}

// ------------------------------------------------------------------ completions

function renderColumns(specs) {
  const host = $("columns");
  host.replaceChildren();
  return specs.map((spec) => {
    const column = document.createElement("article");
    column.className = `column column-${spec.key}`;
    column.dataset.m = JSON.stringify(spec.m);
    column.dataset.state = "running";
    const head = document.createElement("h3");
    head.textContent = spec.label;
    const text = document.createElement("div");
    text.className = "text";
    const foot = document.createElement("p");
    foot.className = "foot muted";
    foot.textContent = "waiting…";
    column.append(head, text, foot);
    host.append(column);
    return { spec, column, text, foot };
  });
}

async function runColumn({ spec, column, text, foot }, signal) {
  const key = JSON.stringify(spec.body);
  const started = performance.now();
  if (state.cache.has(key)) {
    const hit = state.cache.get(key);
    text.textContent = hit.text;
    foot.textContent = `${hit.finish} · unchanged`;
    column.dataset.state = "done";
    return;
  }
  text.textContent = "";
  column.setAttribute("aria-busy", "true");
  try {
    let streamed = "";
    foot.textContent = "streaming…";
    const finish = await streamChat(spec.body, signal, (piece) => {
      streamed += piece;
      text.textContent = streamed;
    });
    state.cache.set(key, { text: streamed, finish });
    if (state.cache.size > CACHE_SIZE) state.cache.delete(state.cache.keys().next().value);
    foot.textContent = `${finish} · ${((performance.now() - started) / 1000).toFixed(1)} s`;
    column.dataset.state = "done";
  } catch (err) {
    if (signal.aborted) {
      column.dataset.state = "cancelled";
      foot.textContent = "stopped";
      return;
    }
    column.dataset.state = "error";
    const error = document.createElement("p");
    error.className = "error";
    error.setAttribute("role", "alert");
    error.textContent = err.message;
    text.append(error);
    foot.textContent = "failed";
  } finally {
    column.removeAttribute("aria-busy");
  }
}

async function run() {
  if (!state.base) return;
  if (state.controller) state.controller.abort();
  const controller = new AbortController();
  state.controller = controller;
  state.ran = true;
  const specs = columns();
  const started = performance.now();
  $("status").textContent = `Running ${specs.length} completion${specs.length > 1 ? "s" : ""}…`;
  await Promise.all(renderColumns(specs).map((column) => runColumn(column, controller.signal)));
  if (state.controller !== controller) return;
  state.controller = null;
  const failed = [...document.querySelectorAll(".column")].filter((c) => c.dataset.state === "error").length;
  const took = ((performance.now() - started) / 1000).toFixed(1);
  const outcome = failed ? `${failed} failed (see the columns), ${took} s.` : `Done in ${took} s.`;
  $("status").textContent = controller.signal.aborted ? "Stopped." : outcome;
}

function stop() {
  if (state.controller) state.controller.abort();
}

function scheduleRun() {
  if (!state.ran || !$("live").checked) return;
  clearTimeout(state.timer);
  state.timer = setTimeout(run, 250);
}

// ------------------------------------------------------------------ runs and sliders

function renderRunPicker() {
  const box = $("runs");
  box.querySelectorAll(":scope > :not(legend)").forEach((node) => node.remove());
  if (!state.runs.length) {
    const none = document.createElement("p");
    none.className = "muted";
    none.textContent = "No runs are served.";
    box.append(none);
  }
  state.runs.forEach((run, i) => {
    const label = document.createElement("label");
    label.className = "check run";
    const tick = document.createElement("input");
    tick.type = "checkbox";
    tick.id = `run-${i}`;
    tick.value = run.id;
    tick.checked = state.selected.includes(run.id);
    tick.addEventListener("change", () => toggleRun(run.id, tick.checked));
    const name = document.createElement("span");
    name.className = "run-name";
    name.textContent = run.id;
    const card = document.createElement("span");
    card.className = "muted run-card";
    card.textContent = [run.form, run.objective, `layer ${run.layer}`, run.dataset].filter(Boolean).join(" · ");
    label.append(tick, name, card);
    box.append(label);
  });
}

async function toggleRun(name, on) {
  state.selected = state.selected.filter((n) => n !== name);
  if (on) state.selected.push(name);
  if (!(name in state.m)) state.m[name] = 0;
  await refreshCurves();
  renderSliders();
  updateCode();
  scheduleRun();
}

function sliderRange(name) {
  const curves = state.curves[name];
  const range = curves && curves.m_range ? curves.m_range : [-4, 4];
  const step = niceStep(range[1] - range[0], 200);
  return { min: range[0], max: range[1], step };
}

function renderSliders() {
  const host = $("sliders");
  host.replaceChildren();
  state.selected.forEach((name, i) => {
    const { min, max, step } = sliderRange(name);
    const box = document.createElement("div");
    box.className = "slider";
    box.dataset.run = name;
    const label = document.createElement("label");
    label.htmlFor = `m-${i}`;
    label.innerHTML = "m for ";
    const strong = document.createElement("strong");
    strong.textContent = shortName(name);
    label.append(strong);
    const row = document.createElement("div");
    row.className = "slider-row";
    const range = document.createElement("input");
    range.type = "range";
    range.id = `m-${i}`;
    range.min = String(Math.min(min, state.m[name]));
    range.max = String(Math.max(max, state.m[name]));
    range.step = String(step);
    range.value = String(state.m[name]);
    range.setAttribute("aria-valuetext", `m = ${fmt(state.m[name], 4)}`);
    const number = document.createElement("input");
    number.type = "number";
    number.id = `m-${i}-number`;
    number.step = String(step);
    number.value = String(state.m[name]);
    number.className = "m-number";
    number.setAttribute("aria-label", `m for ${name}, as a number`);
    const set = (value, source) => {
      if (!Number.isFinite(value)) return;
      state.m[name] = value === 0 ? 0 : value;
      if (source !== range) {
        range.min = String(Math.min(min, value));
        range.max = String(Math.max(max, value));
        range.value = String(value);
      }
      if (source !== number) number.value = String(state.m[name]);
      range.setAttribute("aria-valuetext", `m = ${fmt(state.m[name], 4)}`);
      drawCharts();
      updateCode();
    };
    range.addEventListener("input", () => set(roundTo(Number(range.value), step), range));
    range.addEventListener("change", scheduleRun);
    number.addEventListener("input", () => set(Number(number.value), number));
    number.addEventListener("change", scheduleRun);
    row.append(range, number);
    const scale = document.createElement("p");
    scale.className = "hint";
    scale.textContent = `${fmt(min)} … ${fmt(max)} (the swept range), step ${step}`;
    box.append(label, row, scale);
    host.append(box);
  });
}

// ------------------------------------------------------------------ curves

async function refreshCurves(draw = true) {
  const split = $("split").value;
  const delta = $("delta").value;
  await Promise.all(
    state.selected.map(async (name) => {
      const query = new URLSearchParams({ run: name, delta });
      if (split) query.set("split", split);
      try {
        state.curves[name] = await getJSON(`/playground/curves?${query}`);
      } catch (err) {
        state.curves[name] = { error: err.message };
      }
    }),
  );
  renderSplits();
  if (draw) drawCharts();
}

function renderSplits() {
  const select = $("split");
  const splits = new Set();
  for (const name of state.selected) (state.curves[name]?.splits || []).forEach((s) => splits.add(s));
  const current = select.value || [...state.selected].map((n) => state.curves[n]?.split).find(Boolean) || "";
  const options = [...splits];
  if (options.join() === [...select.options].map((o) => o.value).join()) return;
  select.replaceChildren(
    ...options.map((split) => {
      const option = document.createElement("option");
      option.value = split;
      option.textContent = split;
      option.selected = split === current;
      return option;
    }),
  );
}

function ticks(low, high, count) {
  const step = niceStep(high - low || 1, count);
  const out = [];
  for (let t = Math.ceil(low / step) * step; t <= high + step * 1e-9; t += step) out.push(roundTo(t, step));
  return out;
}

function el(tag, attributes = {}, parent = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  if (parent) parent.append(node);
  return node;
}

// One panel (PrefOdds or UtilOdds against m) of one run, as inline SVG.
function panel(name, kind, data) {
  const W = 440, H = 230, left = 54, right = 14, top = 30, bottom = 40;
  const m = state.m[name];
  const swept = data.swept[kind];
  const fitted = data.fitted ? data.fitted[kind] : null;
  const [mMin, mMax] = [Math.min(data.m_range[0], m), Math.max(data.m_range[1], m)];
  const ys = [];
  const se = swept.std.map((sd, i) => (sd || 0) / Math.sqrt(swept.n[i] || 1)); // standard error of the mean
  swept.mean.forEach((y, i) => y !== null && ys.push(y - se[i], y + se[i]));
  if (fitted) fitted.y.forEach((y) => y !== null && ys.push(y));
  let [yMin, yMax] = [Math.min(...ys), Math.max(...ys)];
  const pad = (yMax - yMin || 1) * 0.06;
  [yMin, yMax] = [yMin - pad, yMax + pad];
  const x = (v) => left + ((v - mMin) / (mMax - mMin || 1)) * (W - left - right);
  const y = (v) => H - bottom - ((v - yMin) / (yMax - yMin)) * (H - top - bottom);

  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, class: `chart chart-${kind}`, role: "img" });
  svg.dataset.run = name;
  svg.dataset.kind = kind;
  // the axes' mapping, for whoever reads the chart (the browser test): data range and pixel range
  Object.assign(svg.dataset, { mMin, mMax, xLeft: left, xRight: W - right });
  Object.assign(svg.dataset, { yMin, yMax, yTop: top, yBottom: H - bottom });
  const r2 = fitted && fitted.r2 !== null ? ` · fit R² ${fmt(fitted.r2, 3)}` : "";
  el("title", {}, svg).textContent = `${KINDS[kind]} against m for ${name} (${data.split})`;
  const title = el("text", { x: left, y: 18, class: "chart-title" }, svg);
  title.textContent = `${KINDS[kind]} (${data.split})${r2}`;

  if (data.budget) {
    const b = data.budget;
    const width = Math.max(0, x(b.m_high) - x(b.m_low));
    el("rect", { x: x(b.m_low), y: top, width, height: H - top - bottom, class: "budget" }, svg);
  }
  for (const t of ticks(yMin, yMax, 5)) {
    el("line", { x1: left, x2: W - right, y1: y(t), y2: y(t), class: "grid" }, svg);
    el("text", { x: left - 6, y: y(t) + 4, class: "tick", "text-anchor": "end" }, svg).textContent = fmt(t, 2);
  }
  for (const t of ticks(mMin, mMax, 8)) {
    el("line", { x1: x(t), x2: x(t), y1: H - bottom, y2: H - bottom + 4, class: "axis" }, svg);
    el("text", { x: x(t), y: H - bottom + 16, class: "tick", "text-anchor": "middle" }, svg).textContent = fmt(t, 2);
  }
  el("line", { x1: left, x2: W - right, y1: H - bottom, y2: H - bottom, class: "axis" }, svg);
  el("line", { x1: left, x2: left, y1: top, y2: H - bottom, class: "axis" }, svg);
  if (mMin < 0 && mMax > 0) el("line", { x1: x(0), x2: x(0), y1: top, y2: H - bottom, class: "zero" }, svg);
  el("text", { x: (left + W - right) / 2, y: H - 6, class: "label", "text-anchor": "middle" }, svg).textContent = "m";

  if (fitted) {
    const point = (v, i) => (fitted.y[i] === null ? null : `${x(v).toFixed(2)},${y(fitted.y[i]).toFixed(2)}`);
    const points = fitted.m.map(point);
    const d = points.filter(Boolean).map((p, i) => (i ? "L" : "M") + p).join(" ");
    el("path", { d, class: `fit fit-${kind}` }, svg);
  }
  swept.m.forEach((v, i) => {
    const mean = swept.mean[i];
    if (mean === null) return;
    el("line", { x1: x(v), x2: x(v), y1: y(mean - se[i]), y2: y(mean + se[i]), class: "errorbar" }, svg);
    el("circle", { cx: x(v), cy: y(mean), r: 3.2, class: `swept swept-${kind}` }, svg);
  });

  // the current m: a line across the panel and a dot on the fitted curve (else on the swept means)
  el("line", { x1: x(m), x2: x(m), y1: top, y2: H - bottom, class: "marker-line" }, svg);
  const at = fitted ? interpolate(fitted.m, fitted.y, m) : interpolate(swept.m, swept.mean, m);
  if (at !== null) {
    const dot = el("circle", { cx: x(m), cy: y(at), r: 5.5, class: "marker" }, svg);
    dot.dataset.m = m;
    dot.dataset.y = at;
    const flip = x(m) > W - 120; // near the right edge the label goes left of the line
    const anchor = flip ? "end" : "start";
    const attributes = { x: x(m) + (flip ? -8 : 8), y: top + 12, class: "marker-label", "text-anchor": anchor };
    const label = el("text", attributes, svg);
    label.textContent = `m = ${fmt(m, 3)}: ${fmt(at, 2)}`;
  }
  return svg;
}

function drawCharts() {
  const host = $("charts");
  host.replaceChildren();
  if (!state.selected.length) {
    const none = document.createElement("p");
    none.className = "muted";
    none.textContent = "Pick a run to see its curves.";
    host.append(none);
  }
  for (const name of state.selected) {
    const data = state.curves[name];
    const figure = document.createElement("figure");
    figure.className = "run-curves";
    figure.dataset.run = name;
    const caption = document.createElement("figcaption");
    caption.textContent = name;
    figure.append(caption);
    if (!data) {
      figure.append(note("Loading…"));
    } else if (data.error) {
      const error = note(data.error);
      error.className = "error";
      error.setAttribute("role", "alert");
      figure.append(error);
    } else if (!data.available) {
      figure.append(note(`No curves: ${data.reason}.`));
    } else {
      const row = document.createElement("div");
      row.className = "chart-row";
      row.append(panel(name, "pref", data), panel(name, "util", data));
      figure.append(row);
      const facts = [];
      if (data.reason) facts.push(`No fitted curves: ${data.reason}.`);
      if (data.budget) {
        const { delta, m_low: low, m_high: high, source } = data.budget;
        const region = `[${fmt(low)}, ${fmt(high)}]`;
        facts.push(`UtilOdds stays within δ = ${fmt(delta)} of m = 0 for m in ${region} (${source}).`);
      }
      if (state.selected.length > 1) facts.push("Curves are this run's alone; the composed request adds the runs' Δ.");
      if (facts.length) figure.append(note(facts.join(" ")));
    }
    host.append(figure);
  }
}

function note(text) {
  const p = document.createElement("p");
  p.className = "muted note";
  p.textContent = text;
  return p;
}

// ------------------------------------------------------------------ code

function py(value) {
  return JSON.stringify(value); // a JSON string or number is a Python literal too
}

function pythonCode() {
  const options = sampling();
  const extra = Object.entries(options).map(([k, v]) => `${k}=${py(v)}`);
  const several = state.selected.length > 1;
  const ms = state.selected.length ? columns().map((c) => (several && c.key === "base" ? scaled(0) : c.m)) : [0];
  const model = state.selected.length ? state.selected[0] : state.base;
  const entries = (m) => Object.entries(m).map(([k, v]) => `${py(k)}: ${py(v)}`);
  const literal = (m) => (typeof m === "number" ? py(m) : `{${entries(m).join(", ")}}`);
  const lines = [
    "from openai import OpenAI",
    "",
    `client = OpenAI(base_url=${py(window.location.origin + "/v1")}, api_key="unused")`,
    `messages = [{"role": "user", "content": ${py($("prompt").value)}}]`,
    `for m in (${ms.map(literal).join(", ")}${ms.length === 1 ? "," : ""}):`,
    "    reply = client.chat.completions.create(",
    `        model=${py(model)},`,
    "        messages=messages,",
    ...extra.map((e) => `        ${e},`),
    `        extra_body={"m": m},`,
    "    )",
    `    print(f"m = {m}:", reply.choices[0].message.content)`,
  ];
  return lines.join("\n");
}

function updateCode() {
  $("code").textContent = pythonCode();
}

async function copyCode() {
  const code = $("code").textContent;
  try {
    await navigator.clipboard.writeText(code);
  } catch (_) {
    const range = document.createRange();
    range.selectNodeContents($("code"));
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    document.execCommand("copy");
  }
  $("status").textContent = "Code copied.";
}

// ------------------------------------------------------------------ start

async function start() {
  $("run").addEventListener("click", run);
  $("stop").addEventListener("click", stop);
  $("copy").addEventListener("click", copyCode);
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      run();
    }
  });
  for (const id of ["prompt", "max-tokens", "temperature", "seed"]) $(id).addEventListener("input", updateCode);
  $("split").addEventListener("change", () => refreshCurves());
  $("delta").addEventListener("change", () => refreshCurves());
  try {
    const models = await getJSON("/v1/models");
    state.runs = models.data.filter((entry) => entry.form);
    const base = models.data.find((entry) => !entry.form);
    state.base = base ? base.id : state.runs.length ? state.runs[0].base_model : null;
  } catch (err) {
    $("served").textContent = `Could not list the served models: ${err.message}`;
    $("served").className = "error";
    return;
  }
  const count = `${state.runs.length} run${state.runs.length === 1 ? "" : "s"}`;
  $("served").textContent = `${count} of ${state.base} · ${window.location.origin}/v1`;
  if (state.runs.length) state.selected = [state.runs[0].id];
  renderRunPicker();
  await refreshCurves(false);
  for (const name of state.selected) {
    const { max, step } = sliderRange(name);
    state.m[name] = roundTo(max / 4, step); // a first m that steers: a quarter of the swept range
  }
  renderSliders();
  drawCharts();
  updateCode();
  document.body.dataset.ready = "true";
}

document.addEventListener("DOMContentLoaded", start);
