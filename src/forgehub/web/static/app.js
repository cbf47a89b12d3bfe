// forgehub dashboard: a little JavaScript on server-rendered pages.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";

async function api(path, opts = {}) {
  const headers = Object.assign({ "X-CSRF-Token": csrf() }, opts.headers || {});
  return fetch(path, Object.assign({ credentials: "same-origin" }, opts, { headers }));
}

async function problem(resp) {
  let body;
  try { body = await resp.json(); } catch { return { detail: resp.statusText }; }
  // the model API's /v2 routes answer as DEEPaaS does: {"field": ["message"]} or {"message": …}
  if (body && typeof body === "object" && !body.detail && !body.errors) {
    if (typeof body.message === "string") return { detail: body.message };
    if (resp.status === 422) return { detail: "Invalid arguments.", errors: body };
  }
  return body;
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

// -- a JSON value as a tree -------------------------------------------------------------------
function jsonTree(value) {
  if (value === null || typeof value !== "object") {
    const cls = typeof value === "string" ? "s" : "n";
    return el("span", { class: cls }, JSON.stringify(value));
  }
  const ul = el("ul");
  for (const [k, v] of Object.entries(value)) {
    ul.append(el("li", {}, el("span", { class: "k" }, Array.isArray(value) ? `${k}: ` : `"${k}": `), jsonTree(v)));
  }
  return ul;
}

// -- errors next to the field they concern -----------------------------------------------------
function clearErrors(form) {
  form.querySelectorAll(".field-error, .form-error").forEach((p) => (p.textContent = ""));
  form.querySelectorAll(".field.invalid").forEach((f) => f.classList.remove("invalid"));
}

function showErrors(form, body, fields = form) {
  let placed = false;
  const errors = body.errors || {};
  const list = Array.isArray(errors) ? errors : Object.entries(errors).map(([k, v]) => ({ path: k, reason: [].concat(v).join(" ") }));
  for (const e of list) {
    const name = String(e.path || e.field || "").split(".").pop();
    const field = fields.querySelector(`.field[data-name="${CSS.escape(name)}"]`);
    if (field) {
      field.classList.add("invalid");
      field.querySelector(".field-error").textContent = e.reason || e.msg || e.message || "invalid";
      placed = true;
    }
  }
  if (!placed) form.querySelector(".form-error").textContent = body.detail || "Something went wrong.";
}

function checkFields(form) {
  // the browser knows ranges and required fields from the schema: say so before sending
  let ok = true;
  form.querySelectorAll(".field[data-name]").forEach((f) => {
    const input = f.querySelector("input, select, textarea");
    if (input && !input.disabled && !input.validity.valid) {
      f.classList.add("invalid");
      f.querySelector(".field-error").textContent = input.validationMessage;
      if (ok) input.focus();
      ok = false;
    }
  });
  return ok;
}

function fieldValues(form) {
  // typed argument values from fields generated from the JSON Schema
  const args = {};
  form.querySelectorAll(".field[data-name]").forEach((f) => {
    const name = f.dataset.name, type = f.dataset.type;
    const input = f.querySelector("input, select, textarea");
    if (!input || type === "file") return;
    if (type === "boolean") { args[name] = input.checked; return; }
    const raw = input.value.trim();
    if (raw === "") return;
    if (type === "integer" || type === "number") args[name] = Number(raw);
    else if (type === "array") args[name] = raw.split(/[\s,]+/).filter(Boolean).map((x) => (isNaN(Number(x)) ? x : Number(x)));
    else args[name] = raw;
  });
  return args;
}

// -- try a module --------------------------------------------------------------------------------
function setupPredict(form) {
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    if (!checkFields(form)) return;
    const out = document.getElementById("result");
    out.textContent = "Predicting…";
    const data = new FormData();
    for (const [k, v] of Object.entries(fieldValues(form))) {
      for (const item of [].concat(v)) data.append(k, String(item));
    }
    form.querySelectorAll('input[type="file"]').forEach((i) => { if (i.files[0]) data.append(i.name, i.files[0]); });
    const accept = form.querySelector('[name="accept"]')?.value || "application/json";
    const version = form.querySelector('select[name="version"]')?.value;
    const query = version ? `?version=${encodeURIComponent(version)}` : "";
    const resp = await api(`/api/v1/model-api/v2/models/${form.getAttribute("data-module")}/predict/${query}`, {
      method: "POST", body: data, headers: { Accept: accept },
    });
    out.textContent = "";
    if (!resp.ok) { showErrors(form, await problem(resp)); return; }
    const type = resp.headers.get("content-type") || "";
    const used = resp.headers.get("x-forgehub-version");
    if (used) out.append(el("p", { class: "muted" }, `Answered by version ${used}.`));
    if (type.includes("json")) {
      out.append(el("h3", {}, "Result"), el("div", { class: "json", id: "result-json" }, jsonTree(await resp.json())));
    } else if (type.startsWith("image/")) {
      const url = URL.createObjectURL(await resp.blob());
      out.append(el("h3", {}, "Result"), el("img", { src: url, alt: "prediction result" }));
    } else {
      const url = URL.createObjectURL(await resp.blob());
      out.append(el("a", { href: url, download: "prediction", class: "button" }, "Download the result"));
    }
  });
}

// -- train a module --------------------------------------------------------------------------------
function setupTrain(form) {
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    if (!checkFields(form)) return;
    const v = (id) => document.getElementById(id).value;
    const body = {
      kind: "train", module: form.getAttribute("data-module"), args: fieldValues(form),
      compute: v("compute"), storage: v("storage"),
      inputs: v("dataset") ? { dataset: v("dataset") } : {},
      resources: { cpu: Number(v("res-cpu")), gpu: Number(v("res-gpu")), memory_mb: Number(v("res-mem")) },
      publish: document.getElementById("publish").checked,
    };
    const btn = form.querySelector('button[type="submit"]');
    btn.disabled = true;
    const resp = await api("/api/v1/jobs", { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } });
    btn.disabled = false;
    if (!resp.ok) {
      const p = await problem(resp);
      if (p.errors && !Array.isArray(p.errors)) p.errors = Object.entries(p.errors).map(([k, r]) => ({ path: k, reason: [].concat(r).join(" ") }));
      showErrors(form, p);
      return;
    }
    location.href = `/jobs/${(await resp.json()).id}`;
  });
}

// -- deploy a module; a deployment's Save and Stop ------------------------------------------------
function setupDeploy(form) {
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    const v = (id) => document.getElementById(id)?.value || "";
    const inputs = {};
    for (const o of document.getElementById("d-inputs").selectedOptions) inputs[o.dataset.name] = o.value;
    const body = {
      module: form.getAttribute("data-module"), version: v("d-version") || null,
      service: v("d-service"), compute: v("d-compute"), title: v("d-title") || null, inputs,
      ttl_s: v("d-ttl") ? Math.round(Number(v("d-ttl")) * 3600) : null,
      idle_stop_s: v("d-idle") ? Math.round(Number(v("d-idle")) * 60) : null,
      resources: { cpu: Number(v("d-cpu")), gpu: Number(v("d-gpu")), gpu_model: v("d-gpu-model") || null,
                   memory_mb: Number(v("d-mem")), disk_mb: Number(v("d-disk")) },
    };
    if (v("d-min") !== "" || v("d-max") !== "") {  // an inference deployment
      const lo = v("d-min") !== "" ? Number(v("d-min")) : 1;
      body.replicas = { min: lo, max: v("d-max") !== "" ? Number(v("d-max")) : Math.max(lo, 1),
                        target: Number(v("d-target") || 4), idle_s: Number(v("d-down") || 60) };
    }
    const btn = form.querySelector('button[type="submit"]');
    btn.disabled = true;
    const resp = await api("/api/v1/deployments", { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } });
    btn.disabled = false;
    if (!resp.ok) { showErrors(form, await problem(resp)); return; }
    location.href = `/deployments/${(await resp.json()).id}`;
  });
}

function setupDeployment(box) {
  const id = box.dataset.id;
  const error = box.querySelector(".form-error");
  const act = async (path, body) => {
    const r = await api(`/api/v1/deployments/${id}/${path}`, { method: "POST", body: JSON.stringify(body || {}), headers: { "Content-Type": "application/json" } });
    if (!r.ok) { error.textContent = (await problem(r)).detail || r.statusText; return false; }
    return true;
  };
  document.getElementById("dep-stop")?.addEventListener("click", async () => { if (await act("stop")) location.reload(); });
  document.getElementById("dep-save")?.addEventListener("click", async () => { if (await act("save")) error.textContent = "Saving…"; });
  if (!["running", "stopped", "failed"].includes(box.dataset.state)) {
    setTimeout(() => location.reload(), 2000);  // until it is up (or has ended)
  }
  if (box.dataset.scaled) scalingCharts(id);
}

// an inference deployment's replicas, requests, latency, errors and cold starts, each second
function scalingCharts(id) {
  const shown = { replicas: "replicas", rps: "requests/s", p50_ms: "p50 latency (ms)", p99_ms: "p99 latency (ms)", errors: "errors", cold_starts: "cold starts" };
  let samples = [], since = 0;
  const at = (x) => `at ${x} s`;
  async function poll() {
    const r = await api(`/api/v1/deployments/${id}/metrics?since=${since}`);
    if (r.ok) {
      const got = (await r.json()).samples;
      if (got.length) {
        samples = samples.concat(got).slice(-1800);
        since = samples[samples.length - 1].t;
        const t0 = samples[0].t;
        document.getElementById("dep-charts").innerHTML = Object.entries(shown)
          .map(([key, name]) => [name, samples.filter((s) => s[key] != null).map((s) => [Math.round(s.t - t0), s[key]])])
          .filter(([, pts]) => pts.length).map(([name, pts]) => drawChart(name, pts, at)).join("");
      }
    }
    setTimeout(poll, 2000);
  }
  poll();
}

// -- a job: live log, metric plots, state --------------------------------------------------------
function drawChart(name, points, at = (x) => `at step ${x}`) {
  const w = 480, h = 150, pad = 28;
  const xs = points.map((p, i) => (p[0] ?? i + 1)), ys = points.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)], [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  const sx = (x) => pad + ((x - x0) / (x1 - x0 || 1)) * (w - 2 * pad);
  const sy = (y) => h - pad + -((y - y0) / (y1 - y0 || 1)) * (h - 2 * pad);
  const d = points.map((p, i) => `${i ? "L" : "M"}${sx(xs[i]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
  // axes labelled at a few round steps and values, not only their ends
  const xTicks = [...new Set([0, 1, 2, 3, 4].map((k) => Math.round(x0 + (k * (x1 - x0)) / 4)))];
  const yTicks = y1 > y0 ? [0, 1, 2].map((k) => y0 + (k * (y1 - y0)) / 2) : [y0];
  const last = ys[ys.length - 1];
  return `<div class="chart" data-metric="${name}"><h3>${name} <span class="muted">${last.toPrecision(4)} ${at(xs[xs.length - 1])}</span></h3>
    <svg viewBox="0 0 ${w} ${h}" role="img" aria-label="${name} over ${points.length} points, last ${last.toPrecision(4)}">
      <line x1="${pad}" y1="${h - pad}" x2="${w - pad}" y2="${h - pad}" stroke="#ccd"/><line x1="${pad}" y1="${pad}" x2="${pad}" y2="${h - pad}" stroke="#ccd"/>
      ${yTicks.map((y) => `<line x1="${pad - 3}" y1="${sy(y).toFixed(1)}" x2="${w - pad}" y2="${sy(y).toFixed(1)}" stroke="#eef"/><text x="2" y="${(sy(y) + 3).toFixed(1)}" font-size="10">${y.toPrecision(3)}</text>`).join("")}
      ${xTicks.map((x) => `<line x1="${sx(x).toFixed(1)}" y1="${h - pad}" x2="${sx(x).toFixed(1)}" y2="${h - pad + 3}" stroke="#99a"/><text x="${sx(x).toFixed(1)}" y="${h - 8}" font-size="10" text-anchor="middle">${x}</text>`).join("")}
      <path d="${d}" fill="none" stroke="#2456c9" stroke-width="2"/>
    </svg></div>`;
}

function setupJob(box) {
  const id = box.dataset.job;
  const log = document.getElementById("log");
  const series = {};
  let cursor = 0, done = box.dataset.finished === "true";
  const addLines = (lines) => {
    const stick = log.scrollTop + log.clientHeight >= log.scrollHeight - 20;
    for (const [, stream, text] of lines) log.append(el("span", { class: stream }, text + "\n"));
    if (stick) log.scrollTop = log.scrollHeight;
  };
  const es = new EventSource(`/api/v1/jobs/${id}/logs?follow=true`);
  es.addEventListener("lines", (e) => addLines(JSON.parse(e.data).lines));
  es.addEventListener("end", () => { es.close(); refresh(); });
  es.onerror = () => { if (done) es.close(); };
  async function metrics() {
    const r = await api(`/api/v1/jobs/${id}/metrics?after=${cursor}`);
    if (!r.ok) return;
    const m = await r.json();
    cursor = m.next;
    let changed = false;
    for (const [name, pts] of Object.entries(m.series)) { (series[name] ||= []).push(...pts); changed = true; }
    if (changed) document.getElementById("charts").innerHTML = Object.entries(series).map(([n, p]) => drawChart(n, p)).join("");
  }
  async function refresh() {
    const r = await api(`/api/v1/jobs/${id}`);
    if (!r.ok) return;
    const j = await r.json();
    const st = document.getElementById("state");
    st.textContent = j.state; st.className = `state state-${j.state}`;
    const tl = document.getElementById("timeline");
    tl.replaceChildren(...j.events.map((e) => el("li", {}, el("span", { class: `state state-${e.state}` }, e.state), " ", el("time", {}, e.at.slice(0, 19).replace("T", " ")), " ", e.message || "")));
    if (j.error) { const er = document.getElementById("error"); er.textContent = j.error; er.hidden = false; }
    if (["succeeded", "failed", "cancelled"].includes(j.state) && !done) { done = true; await metrics(); location.reload(); }
  }
  metrics();
  const timer = setInterval(async () => { if (done) { clearInterval(timer); return; } await metrics(); await refresh(); }, 1000);
  document.getElementById("cancel")?.addEventListener("click", async () => {
    await api(`/api/v1/jobs/${id}/cancel`, { method: "POST" });
    refresh();
  });
  const pub = document.getElementById("publish");
  pub?.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const version = document.getElementById("pub-version").value.trim() || null;
    const r = await api(`/api/v1/jobs/${id}/publish`, { method: "POST", body: JSON.stringify({ version }), headers: { "Content-Type": "application/json" } });
    if (!r.ok) { pub.querySelector(".form-error").textContent = (await problem(r)).detail; return; }
    location.reload();
  });
}

// -- storage: test buttons, upload with progress ------------------------------------------------
function setupTests() {
  document.querySelectorAll(".test-conn").forEach((b) => b.addEventListener("click", async () => {
    const out = b.parentElement.querySelector(".test-result");
    out.textContent = "testing…";
    const r = await api(b.dataset.url, { method: "POST" });
    const body = await problem(r);
    out.textContent = r.ok && body.ok ? `ok: ${body.detail}` : `failed: ${body.detail}`;
  }));
}

function setupUpload(form) {
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const file = document.getElementById("upload-file").files[0];
    if (!file) return;
    const name = document.getElementById("upload-name").value.trim();
    const bar = document.getElementById("upload-progress"), status = document.getElementById("upload-status");
    const params = new URLSearchParams({ filename: file.name });
    if (name) params.set("name", name);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/api/v1/artifacts?${params}`);
    xhr.setRequestHeader("X-CSRF-Token", csrf());
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    bar.hidden = false; bar.value = 0;
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) { bar.value = (100 * e.loaded) / e.total; status.textContent = `${Math.round(bar.value)}%`; } };
    xhr.onload = () => {
      if (xhr.status === 201) { status.textContent = "uploaded"; setTimeout(() => location.reload(), 300); }
      else { let d = xhr.statusText; try { d = JSON.parse(xhr.responseText).detail; } catch {} status.textContent = `failed: ${d}`; }
    };
    xhr.onerror = () => { status.textContent = "failed: the connection broke"; };
    xhr.send(file);
  });
}

// -- add a storage or compute connection ---------------------------------------------------------
function setupConnectionForm(form) {
  const select = form.querySelector(".kind-select");
  const show = () => form.querySelectorAll(".kind-fields").forEach((fs) => {
    const on = fs.dataset.kind === select.value;
    fs.hidden = !on; fs.disabled = !on;
  });
  select.addEventListener("change", show);
  show();
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    const fs = form.querySelector(`.kind-fields[data-kind="${CSS.escape(select.value)}"]`);
    const name = form.querySelector('[name="name"]');
    if (!name.validity.valid) { form.querySelector(".form-error").textContent = "Give it a name: lower-case letters, digits, '_', '.', '-'."; name.focus(); return; }
    if (!checkFields(fs)) return;
    const btn = form.querySelector('button[type="submit"]');
    btn.disabled = true; btn.textContent = "Testing…";
    const r = await api(form.getAttribute("data-url"), {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ name: name.value, kind: select.value, config: fieldValues(fs) }),
    });
    btn.disabled = false; btn.textContent = "Test and save";
    if (r.ok) { location.reload(); return; }
    showErrors(form, await problem(r), fs);
  });
}

// -- pipelines: a run's graph coloured live; the Run form of a pipeline -------------------------
function setupPipelineRun(fig) {
  const id = fig.getAttribute("data-run");
  const ended = (s) => !["running", "cancelling"].includes(s);
  const tick = async () => {
    const r = await api(`/api/v1/pipeline-runs/${id}`);
    if (!r.ok) return;
    const run = await r.json();
    for (const s of run.steps) {
      const g = fig.querySelector(`g[data-step="${CSS.escape(s.name)}"]`);
      if (!g) continue;
      g.setAttribute("class", `node state-${s.state}`);
      g.querySelector(".step-state").textContent = s.state;
      if (s.job) g.parentElement.setAttribute("href", `/jobs/${s.job}`);
    }
    const badge = document.getElementById("run-state");
    if (badge.textContent !== run.state) { badge.textContent = run.state; badge.className = `state state-${run.state}`; }
    if (ended(run.state)) { if (run.steps.some((s) => s.outputs && Object.keys(s.outputs).length)) setTimeout(() => location.reload(), 300); return; }
    setTimeout(tick, 1000);
  };
  if (!ended(document.getElementById("run-state").textContent)) setTimeout(tick, 1000);
}

function setupRunForm(form) {
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const params = {};
    for (const i of form.querySelectorAll('input[name^="param:"]')) {
      let v = i.value; try { v = JSON.parse(v); } catch { /* a string */ }
      params[i.name.slice(6)] = v;
    }
    const body = { pipeline: form.getAttribute("data-pipeline"), params, on: form.elements.on.value, store: form.elements.store.value || null };
    const status = form.querySelector(".run-status");
    status.textContent = "Starting…";
    const r = await api("/api/v1/pipeline-runs", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    if (r.ok) { location.href = `/pipelines/runs/${(await r.json()).id}`; return; }
    status.textContent = (await problem(r)).detail || "Could not start it.";
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll(".connection-form").forEach(setupConnectionForm);
  document.querySelectorAll("[data-autosubmit]").forEach((c) => c.addEventListener("change", () => c.form.submit()));
  const p = document.getElementById("predict"); if (p) setupPredict(p);
  const t = document.getElementById("train"); if (t) setupTrain(t);
  const j = document.getElementById("job"); if (j) setupJob(j);
  const dp = document.getElementById("deploy"); if (dp) setupDeploy(dp);
  const db = document.getElementById("deployment"); if (db) setupDeployment(db);
  const u = document.getElementById("upload"); if (u) setupUpload(u);
  document.querySelectorAll("figure.pipeline-graph").forEach(setupPipelineRun);
  document.querySelectorAll("form.run-pipeline").forEach(setupRunForm);
  setupTests();
});

// on a narrow screen the filters start folded, so the modules are what one sees first
if (window.matchMedia("(max-width: 760px)").matches) {
  for (const d of document.querySelectorAll("details.facets-box")) d.open = false;
}
