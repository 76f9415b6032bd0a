// afinar web console: each page calls the public HTTP API (Bedrock routes, /v1, /afinar).
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const enc = encodeURIComponent;
const ROLE = "arn:aws:iam::000000000000:role/afinar-console";

function showError(msg) {
  const e = $("#error");
  if (!e) return;
  e.textContent = msg || "";
  e.hidden = !msg;
}

async function api(path, opts = {}) {
  const init = {method: opts.method || "GET", headers: {}};
  if (opts.json !== undefined) {
    init.body = JSON.stringify(opts.json);
    init.headers["content-type"] = "application/json";
  } else if (opts.body !== undefined) {
    init.body = opts.body;  // a file: sent as bytes (the server refuses form-like types)
    if (opts.body) init.headers["content-type"] = "application/octet-stream";
  }
  const r = await fetch(path, init);
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : {}; } catch { data = {message: text}; }
  if (!r.ok) {
    const code = r.headers.get("x-amzn-ErrorType") || data.code || r.status;
    throw new Error(`${code}: ${data.message || data.Message || (data.error && data.error.message) || text}`);
  }
  return data;
}

const fmtTime = (t) => (t ? new Date(t).toLocaleString() : "");
const tail = (arn) => String(arn || "").split("/").pop();
function dl(el, obj) {
  el.innerHTML = Object.entries(obj).filter(([, v]) => v !== undefined && v !== null && v !== "")
    .map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(typeof v === "object" ? JSON.stringify(v) : v)}</dd>`).join("");
}
function statusBadge(s) { return `<span class="status s-${esc(s)}">${esc(s)}</span>`; }

// -- jobs ------------------------------------------------------------------------------------
async function jobsPage() {
  const form = $("#filters");
  async function load() {
    const p = new URLSearchParams({sortBy: "CreationTime", sortOrder: "Descending", maxResults: "100"});
    for (const [k, v] of new FormData(form)) if (v) p.set(k, v);
    try {
      const d = await api(`/model-customization-jobs?${p}`);
      $("#jobs tbody").innerHTML = d.modelCustomizationJobSummaries.map((j) => `<tr>
        <td><a href="/console/jobs/${enc(j.jobName)}">${esc(j.jobName)}</a></td><td>${statusBadge(j.status)} <span class="muted" data-progress="${esc(j.jobName)}"></span></td>
        <td>${esc(j.customizationType)}</td><td>${esc(tail(j.baseModelArn))}</td>
        <td>${j.customModelName ? `<a href="/console/models/${enc(j.customModelName)}">${esc(j.customModelName)}</a>` : ""}</td>
        <td>${esc(fmtTime(j.creationTime))}</td></tr>`).join("") || `<tr><td colspan="6">No jobs yet.</td></tr>`;
      for (const j of d.modelCustomizationJobSummaries.filter((x) => x.status === "InProgress")) {
        const m = await api(`/afinar/jobs/${enc(j.jobName)}/metrics`);
        const el = document.querySelector(`[data-progress="${CSS.escape(j.jobName)}"]`);
        if (el && m.progress) el.textContent = `step ${m.progress.step}/${m.progress.total}`;
      }
      showError("");
    } catch (e) { showError(e.message); }
  }
  form.addEventListener("input", load);
  form.addEventListener("submit", (e) => { e.preventDefault(); load(); });
  await load();
  setInterval(load, 5000);
}

async function fillModelSelect(sel, {custom = true, base = true} = {}) {
  const opts = [];
  if (base) {
    const f = await api("/foundation-models");
    for (const m of f.modelSummaries) opts.push(m.modelId);
  }
  if (custom) {
    const c = await api("/custom-models?maxResults=100");
    for (const m of c.modelSummaries) opts.push(m.modelName);
  }
  sel.innerHTML = opts.map((o) => `<option>${esc(o)}</option>`).join("");
}

async function upload(file) {
  const d = await api(`/afinar/uploads?filename=${enc(file.name)}`, {method: "POST", body: file});
  return d.s3Uri;
}

async function jobNewPage() {
  const form = $("#job-form");
  try { await fillModelSelect($("#base-models")); } catch (e) { showError(e.message); }
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    showError("");
    const fd = new FormData(form);
    const btn = $("button[type=submit]", form);
    btn.disabled = true;
    try {
      let train = fd.get("trainingUri");
      const tf = fd.get("trainingFile");
      if (tf && tf.size) train = await upload(tf);
      if (!train) throw new Error("choose a training file or give its S3 URI");
      const hp = {};
      for (const k of ["epochCount", "batchSize", "learningRate", "learningRateWarmupSteps"]) {
        if (fd.get(k) !== "" && fd.get(k) !== null) hp[k] = String(fd.get(k));
      }
      const req = {jobName: fd.get("jobName"), customModelName: fd.get("customModelName"),
        roleArn: ROLE, baseModelIdentifier: fd.get("baseModelIdentifier"),
        customizationType: fd.get("customizationType"), trainingDataConfig: {s3Uri: train},
        outputDataConfig: {s3Uri: `s3://afinar-console/${fd.get("jobName")}/output/`}, hyperParameters: hp};
      const vf = fd.get("validationFile");
      if (vf && vf.size) req.validationDataConfig = {validators: [{s3Uri: await upload(vf)}]};
      await api("/model-customization-jobs", {method: "POST", json: req});
      location.href = `/console/jobs/${enc(req.jobName)}`;
    } catch (err) { showError(err.message); btn.disabled = false; }
  });
}

async function jobPage() {
  const name = $("#page").dataset.job;
  let chart = null, lastEvent = 0, modelName = null;
  const ctx = $("#loss-chart");
  function drawChart(m) {
    const train = m.training.map((r) => ({x: r.step_number, y: r.training_loss}));
    const valid = m.validation.map((r) => ({x: r.step_number, y: r.validation_loss}));
    $("#points").textContent = `${train.length} training points, ${valid.length} validation points`;
    if (!window.Chart) return;
    if (!chart) {
      chart = new Chart(ctx, {type: "line", data: {datasets: [
        {label: "training loss", data: train, borderColor: "#2563eb", pointRadius: 0, tension: 0.2},
        {label: "validation loss", data: valid, borderColor: "#dc2626", pointRadius: 3, showLine: true}]},
        options: {animation: false, parsing: false, responsive: true, maintainAspectRatio: false,
          scales: {x: {type: "linear", title: {display: true, text: "step"}}, y: {title: {display: true, text: "loss"}}}}});
    } else {
      chart.data.datasets[0].data = train;
      chart.data.datasets[1].data = valid;
      chart.update();
    }
  }
  async function tick() {
    try {
      const j = await api(`/model-customization-jobs/${enc(name)}`);
      modelName = j.outputModelName;
      const fail = $("#failure");
      fail.hidden = !j.failureMessage;
      fail.textContent = j.failureMessage ? `Failed: ${j.failureMessage}` : "";
      dl($("#job-info"), {Status: j.status, Type: j.customizationType, "Base model": tail(j.baseModelArn),
        "Custom model": j.outputModelName, Created: fmtTime(j.creationTime), Ended: fmtTime(j.endTime),
        "Training loss": j.trainingMetrics && j.trainingMetrics.trainingLoss,
        Hyperparameters: j.hyperParameters, "Training data": j.trainingDataConfig && j.trainingDataConfig.s3Uri});
      $("#job-info").dataset.status = j.status;
      const sd = j.statusDetails || {};
      $("#phases").innerHTML = [["validationDetails", "Validation"], ["dataProcessingDetails", "Data processing"],
        ["trainingDetails", "Training"]].map(([k, label]) => `<li>${label}: ${statusBadge((sd[k] || {}).status || "NotStarted")}</li>`).join("");
      $("#stop").hidden = j.status !== "InProgress";
      const link = $("#model-link");
      link.hidden = j.status !== "Completed";
      link.href = `/console/models/${enc(j.outputModelName)}`;
      drawChart(await api(`/afinar/jobs/${enc(name)}/metrics`));
      const ev = await api(`/afinar/jobs/${enc(name)}/events?after=${lastEvent}`);
      for (const e of ev.events) {
        lastEvent = e.id;
        const li = document.createElement("li");
        li.className = `lvl-${e.level}`;
        li.textContent = `${new Date(e.time).toLocaleTimeString()} ${e.level} ${e.message}`;
        $("#events").appendChild(li);
      }
      showError("");
      if (["InProgress", "Stopping"].includes(j.status)) setTimeout(tick, 1500);
    } catch (e) { showError(e.message); setTimeout(tick, 4000); }
  }
  $("#stop").addEventListener("click", async () => {
    try { await api(`/model-customization-jobs/${enc(name)}/stop`, {method: "POST", json: {}}); tick(); }
    catch (e) { showError(e.message); }
  });
  tick();
}

// -- data check --------------------------------------------------------------------------------
async function dataPage() {
  let chart = null;
  $("#check-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const fd = new FormData(e.target);
    const f = fd.get("file"), uri = (fd.get("s3Uri") || "").trim();
    try {
      let r;
      if (f && f.size) r = await api(`/afinar/data/check?filename=${enc(f.name)}`, {method: "POST", body: f});
      else if (uri) r = await api(`/afinar/data/check?s3Uri=${enc(uri)}`, {method: "POST", body: ""});
      else throw new Error("choose a file to upload or give the S3 URI of a dataset");
      $("#report").hidden = false;
      $("#summary").innerHTML = `${r.ok ? "✅ ready to train" : "❌ fix the errors below first"} — ` +
        `${esc(r.valid)} of ${esc(r.records)} records valid, format ${esc(r.format)}, schema ${esc(r.schema || "unknown")}`;
      $("#errors tbody").innerHTML = r.errors.map((i) => `<tr><td>${esc(i.line ?? "")}</td><td>${esc(i.field ?? "")}</td><td>${esc(i.message)}</td></tr>`).join("")
        || `<tr><td colspan="3">No errors.</td></tr>`;
      const dup = (r.exact_duplicates || []).length, near = (r.near_duplicates || []).length;
      $("#warnings").innerHTML = [...r.warnings, `${dup} exact duplicate group(s), ${near} near-duplicate group(s)`]
        .map((w) => `<li>${esc(w)}</li>`).join("");
      const h = r.length_histogram;
      if (h && window.Chart) {
        const labels = h.counts.map((_, i) => `${h.edges[i]}–${h.edges[i + 1] - 1}`);
        if (chart) chart.destroy();
        chart = new Chart($("#length-chart"), {type: "bar", data: {labels, datasets: [{label: `records by length (${h.unit})`, data: h.counts, backgroundColor: "#2563eb"}]},
          options: {animation: false, responsive: true, maintainAspectRatio: false}});
      }
      $("#labels").innerHTML = r.labels ? `<table><tr><th>Label</th><th>Count</th></tr>${Object.entries(r.labels.counts || r.labels).map(([k, v]) => `<tr><td>${esc(k)}</td><td>${esc(typeof v === "object" ? JSON.stringify(v) : v)}</td></tr>`).join("")}</table>` : "No labels.";
      $("#size").textContent = r.size_guidance ? (r.size_guidance.message || JSON.stringify(r.size_guidance)) : "";
      showError("");
    } catch (err) { showError(err.message); }
  });
}

// -- models ------------------------------------------------------------------------------------
async function modelsPage() {
  try {
    const c = await api("/custom-models?maxResults=100");
    $("#custom-models tbody").innerHTML = c.modelSummaries.map((m) => `<tr><td><a href="/console/models/${enc(m.modelName)}">${esc(m.modelName)}</a></td>
      <td>${esc(m.baseModelName || tail(m.baseModelArn))}</td><td>${esc(m.customizationType)}</td><td>${esc(fmtTime(m.creationTime))}</td></tr>`).join("")
      || `<tr><td colspan="4">No custom models yet.</td></tr>`;
    const f = await api("/foundation-models");
    $("#base-models-table tbody").innerHTML = f.modelSummaries.map((m) => `<tr><td>${esc(m.modelId)}</td><td>${esc(m.modelName)}</td>
      <td>${esc(m.providerName)}</td><td>${esc((m.customizationsSupported || []).join(", "))}</td></tr>`).join("");
  } catch (e) { showError(e.message); }
}

async function modelPage() {
  const name = $("#page").dataset.model;
  try {
    const m = await api(`/custom-models/${enc(name)}`);
    // lineage: walk up while the base is itself a custom model (base -> CPT -> FT)
    const chain = [m.modelName];
    let parent = m.baseModelArn;
    for (let i = 0; i < 10 && parent; i++) {
      if (!parent.includes(":custom-model/")) { chain.unshift(tail(parent)); break; }
      const pm = await api(`/custom-models/${enc(parent)}`);
      chain.unshift(pm.modelName);
      parent = pm.baseModelArn;
    }
    $("#lineage").innerHTML = `Lineage: ${chain.map((c, i) => i < chain.length - 1 && i > 0
      ? `<a href="/console/models/${enc(c)}">${esc(c)}</a>` : esc(c)).join(" → ")}`;
    dl($("#model-info"), {Name: m.modelName, ARN: m.modelArn, Status: m.modelStatus, Type: m.customizationType,
      "Base model": m.baseModelArn, Job: m.jobName, Created: fmtTime(m.creationTime),
      "Training data": m.trainingDataConfig && m.trainingDataConfig.s3Uri, Artifacts: m.outputDataConfig && m.outputDataConfig.s3Uri});
    dl($("#model-metrics"), {"Training loss": m.trainingMetrics && m.trainingMetrics.trainingLoss,
      "Validation loss": (m.validationMetrics || []).map((v) => v.validationLoss).join(", ")});
    dl($("#model-hp"), m.hyperParameters || {});
    $("#try").href = `/console/playground?a=${enc(tail(m.baseModelArn))}&b=${enc(m.modelName)}`;
  } catch (e) { showError(e.message); }
  $("#delete").addEventListener("click", async () => {
    if (!confirm(`Delete custom model ${name}?`)) return;
    try { await api(`/custom-models/${enc(name)}`, {method: "DELETE"}); location.href = "/console/models"; }
    catch (e) { showError(e.message); }
  });
}

// -- playground ----------------------------------------------------------------------------------
async function servedModels() {
  const d = await api("/v1/models");
  return d.data.map((m) => m.id);
}

async function streamChat(model, prompt, settings, out) {
  out.textContent = "";
  let pieces = 0;
  const r = await fetch("/v1/chat/completions", {method: "POST", headers: {"content-type": "application/json"},
    body: JSON.stringify({model, messages: [{role: "user", content: prompt}], stream: true, ...settings})});
  if (!r.ok) { out.textContent = `error: ${await r.text()}`; return; }
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buf += dec.decode(value, {stream: true});
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const chunk = buf.slice(0, i); buf = buf.slice(i + 2);
      for (const line of chunk.split("\n")) {
        if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
        const d = JSON.parse(line.slice(6));
        const piece = d.choices && d.choices[0] && d.choices[0].delta && d.choices[0].delta.content;
        if (piece) { out.textContent += piece; pieces += 1; }
      }
    }
  }
  out.dataset.pieces = String(pieces);
  out.dataset.done = "1";
}

async function playgroundPage() {
  const form = $("#play-form");
  try {
    const models = await servedModels();
    for (const sel of document.querySelectorAll(".model-select")) sel.innerHTML = models.map((m) => `<option>${esc(m)}</option>`).join("");
    const q = new URLSearchParams(location.search);
    for (const k of ["a", "b"]) if (q.get(k) && models.includes(q.get(k))) form.elements[k].value = q.get(k);
  } catch (e) { showError(e.message); }
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const fd = new FormData(form);
    const settings = {max_tokens: Number(fd.get("max_tokens")), temperature: Number(fd.get("temperature")), top_p: Number(fd.get("top_p"))};
    $("#a-name").textContent = fd.get("a"); $("#b-name").textContent = fd.get("b");
    for (const k of ["a", "b"]) delete $(`#${k}-out`).dataset.done;
    try {
      await Promise.all([streamChat(fd.get("a"), fd.get("prompt"), settings, $("#a-out")),
        streamChat(fd.get("b"), fd.get("prompt"), settings, $("#b-out"))]);
      showError("");
    } catch (err) { showError(err.message); }
  });
}

// -- evaluation ------------------------------------------------------------------------------------
async function evaluationsPage() {
  try {
    const models = await servedModels();
    $(".model-select").innerHTML = models.map((m) => `<option>${esc(m)}</option>`).join("");
  } catch (e) { showError(e.message); }
  async function load() {
    try {
      const d = await api("/afinar/evaluations");
      const items = d.evaluations || d;
      $("#evals tbody").innerHTML = items.map((x) => `<tr><td>${esc(x.id)}</td><td>${statusBadge(x.status)}</td>
        <td>${esc((x.models || []).join(", "))}</td><td>${x.status === "Completed" ? `<a href="#" data-report="${esc(x.id)}">open report</a>` : ""}</td></tr>`).join("")
        || `<tr><td colspan="4">No evaluations yet.</td></tr>`;
    } catch (e) { showError(e.message); }
  }
  $("#evals").addEventListener("click", (e) => {
    const id = e.target.dataset.report;
    if (!id) return;
    e.preventDefault();
    const fr = $("#report-frame");
    fr.src = `/afinar/evaluations/${enc(id)}/report.html`;
    fr.hidden = false;
  });
  $("#eval-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const fd = new FormData(e.target);
    try {
      await api("/afinar/evaluations", {method: "POST", json: {models: [fd.get("model")], data: fd.get("data"),
        compareBase: fd.get("compareBase") === "on", maxExamples: Number(fd.get("maxExamples"))}});
      load();
    } catch (err) { showError(err.message); }
  });
  load();
  setInterval(load, 5000);
}

// -- knowledge bases ------------------------------------------------------------------------------
async function kbPage() {
  let current = null;
  async function load() {
    try {
      const d = await api("/knowledgebases/", {method: "POST", json: {}});
      $("#kbs tbody").innerHTML = d.knowledgeBaseSummaries.map((k) => `<tr><td><a href="#" data-kb="${esc(k.knowledgeBaseId)}">${esc(k.name)}</a></td>
        <td>${esc(k.knowledgeBaseId)}</td><td>${statusBadge(k.status)}</td><td>${esc(fmtTime(k.updatedAt))}</td></tr>`).join("")
        || `<tr><td colspan="4">No knowledge bases yet.</td></tr>`;
    } catch (e) { showError(e.message); }
  }
  async function open(id) {
    const k = (await api(`/knowledgebases/${enc(id)}`)).knowledgeBase;
    current = {id, ds: null};
    $("#kb-detail").hidden = false;
    $("#kb-title").textContent = `${k.name} (${k.knowledgeBaseId})`;
    const ds = await api(`/knowledgebases/${enc(id)}/datasources/`, {method: "POST", json: {}});
    current.ds = ds.dataSourceSummaries.length ? ds.dataSourceSummaries[0].dataSourceId : null;
    $("#sources").innerHTML = ds.dataSourceSummaries.map((s) => `<li>${esc(s.name)} (${esc(s.dataSourceId)})</li>`).join("") || "<li>No data source yet.</li>";
    try { $(".model-select").innerHTML = (await servedModels()).map((m) => `<option>${esc(m)}</option>`).join(""); } catch (e) { showError(e.message); }
  }
  $("#kbs").addEventListener("click", (e) => { if (e.target.dataset.kb) { e.preventDefault(); open(e.target.dataset.kb); } });
  $("#kb-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const name = new FormData(e.target).get("name");
      const k = await api("/knowledgebases/", {method: "PUT", json: {name, roleArn: ROLE, knowledgeBaseConfiguration: {
        type: "VECTOR", vectorKnowledgeBaseConfiguration: {embeddingModelArn: "arn:aws:bedrock:us-east-1::foundation-model/all-minilm-l6-v2"}}}});
      await load(); await open(k.knowledgeBase.knowledgeBaseId);
    } catch (err) { showError(err.message); }
  });
  $("#ds-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const fd = new FormData(e.target);
    try {
      await api(`/knowledgebases/${enc(current.id)}/datasources/`, {method: "PUT", json: {name: `${fd.get("bucket")}-${fd.get("prefix") || "all"}`.replace(/[^a-zA-Z0-9_-]/g, "-"),
        dataSourceConfiguration: {type: "S3", s3Configuration: {bucketArn: `arn:aws:s3:::${fd.get("bucket")}`, inclusionPrefixes: fd.get("prefix") ? [fd.get("prefix")] : undefined}}}});
      await open(current.id);
    } catch (err) { showError(err.message); }
  });
  $("#sync").addEventListener("click", async () => {
    if (!current || !current.ds) { showError("add a data source first"); return; }
    try {
      const base = `/knowledgebases/${enc(current.id)}/datasources/${enc(current.ds)}/ingestionjobs/`;
      let j = (await api(base, {method: "PUT", json: {}})).ingestionJob;
      while (["STARTING", "IN_PROGRESS"].includes(j.status)) {
        $("#sync-status").innerHTML = statusBadge(j.status);
        await new Promise((r) => setTimeout(r, 700));
        j = (await api(base + enc(j.ingestionJobId))).ingestionJob;
      }
      $("#sync-status").innerHTML = statusBadge(j.status) + (j.failureReasons ? ` ${esc(j.failureReasons.join("; "))}` : "");
      dl($("#counters"), j.statistics || {});
    } catch (err) { showError(err.message); }
  });
  $("#ask-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const fd = new FormData(e.target);
    try {
      const r = await api("/retrieveAndGenerate", {method: "POST", json: {input: {text: fd.get("q")},
        retrieveAndGenerateConfiguration: {type: "KNOWLEDGE_BASE", knowledgeBaseConfiguration: {knowledgeBaseId: current.id, modelArn: fd.get("model"),
          generationConfiguration: {inferenceConfig: {textInferenceConfig: {maxTokens: 96}}}}}}});
      const text = r.output.text;
      let html = "", pos = 0;
      r.citations.forEach((c, i) => {
        const s = c.generatedResponsePart.textResponsePart.span;
        html += esc(text.slice(pos, s.start)) + `<mark title="citation ${i + 1}">${esc(text.slice(s.start, s.end))}</mark><sup>[${i + 1}]</sup>`;
        pos = s.end;
      });
      $("#answer").innerHTML = text.trim() ? html + esc(text.slice(pos))
        : `<span class="muted">(the model returned an empty answer)</span>`;
      $("#answer").dataset.done = "1";
      $("#citations").innerHTML = r.citations.map((c) => `<li>${c.retrievedReferences.map((ref) => {
        const loc = ref.location.s3Location ? ref.location.s3Location.uri : (ref.location.customDocumentLocation || {}).id;
        return `<strong>${esc(loc)}</strong>: ${esc(ref.content.text.slice(0, 240))}`;
      }).join("<br>")}</li>`).join("");
      showError("");
    } catch (err) { showError(err.message); }
  });
  load();
}

// -- advisor and catalog ----------------------------------------------------------------------------
async function advisorPage() {
  $("#advise-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const a = await api(`/afinar/advise?${new URLSearchParams(new FormData(e.target))}`);
      const names = a.recommend.map((k) => a.comparison[k].name).join(" + ");
      const rows = ["cost", "time", "data", "infrastructure", "updates", "transparency"];
      $("#advice").innerHTML = `<h2>Recommendation: ${esc(names)}</h2><ul>${a.reasons.map((r) => `<li>${esc(r)}</li>`).join("")}</ul>
        <table><tr><th></th>${a.recommend.map((k) => `<th>${esc(a.comparison[k].name)}</th>`).join("")}</tr>
        ${rows.map((r) => `<tr><th>${r}</th>${a.recommend.map((k) => `<td>${esc(a.comparison[k][r])}</td>`).join("")}</tr>`).join("")}</table>
        <h3>Start with</h3><pre>${a.commands.map(esc).join("\n")}</pre>`;
      showError("");
    } catch (err) { showError(err.message); }
  });
}

async function catalogPage() {
  try {
    const d = await api("/afinar/catalog");
    $("#recipes tbody").innerHTML = d.recipes.map((r) => `<tr><td>${esc(r.title)}<br><code>${esc(r.name)}</code></td><td>${esc(r.type)}</td>
      <td>${esc(r.base_model)}</td><td>${esc(r.description)}</td><td><button type="button" data-run="${esc(r.name)}">Run</button></td></tr>`).join("");
  } catch (e) { showError(e.message); }
  $("#recipes").addEventListener("click", async (e) => {
    const name = e.target.dataset.run;
    if (!name) return;
    e.target.disabled = true;
    try {
      const r = await api(`/afinar/catalog/${enc(name)}/run`, {method: "POST", json: {}});
      $("#run-result").innerHTML = r.jobName ? `Job <a href="/console/jobs/${enc(r.jobName)}">${esc(r.jobName)}</a> created.`
        : `Knowledge base ${esc(r.knowledgeBaseId)} created; ingestion job ${esc(r.ingestionJobId)} started (<a href="/console/kb">knowledge bases</a>).`;
    } catch (err) { showError(err.message); }
    e.target.disabled = false;
  });
}

const PAGES = {jobs: jobsPage, "job-new": jobNewPage, job: jobPage, data: dataPage, models: modelsPage,
  model: modelPage, playground: playgroundPage, evaluations: evaluationsPage, kb: kbPage,
  advisor: advisorPage, catalog: catalogPage};
document.addEventListener("DOMContentLoaded", () => {
  const fn = PAGES[$("#page").dataset.page];
  if (fn) fn().catch((e) => showError(e.message));
});
