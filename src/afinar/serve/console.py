"""The web console at `/`: server-rendered pages with a little JavaScript (static/app.js) that
calls only the public HTTP API (Bedrock's routes, /v1, /afinar/...), as boto3 and the CLI do.
Assets, including Chart.js (vendored from npm by scripts/vendor-assets.sh), are served from the
package: nothing is fetched from the network at run time."""

from __future__ import annotations

import html
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response

from afinar import jsonutil

STATIC = Path(__file__).resolve().parents[1] / "webui" / "static"
NAV = [("jobs", "Jobs"), ("data", "Data check"), ("models", "Models"),
       ("playground", "Playground"), ("evaluations", "Evaluation"),
       ("kb", "Knowledge bases"), ("advisor", "Advisor"), ("catalog", "Catalog")]
TYPES = {".js": "text/javascript", ".css": "text/css", ".md": "text/markdown"}


def page(name: str, title: str, body: str, data: dict | None = None) -> HTMLResponse:
    nav = "".join(f'<a href="/console/{k}"{" aria-current=page" if k == name else ""}>{v}</a>'
                  for k, v in NAV)
    attrs = " ".join(f'data-{k}="{html.escape(str(v))}"' for k, v in (data or {}).items())
    return HTMLResponse(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} · afinar</title>
<link rel="stylesheet" href="/console/static/app.css">
<script src="/console/static/vendor/chart.umd.min.js" defer></script>
<script src="/console/static/app.js" defer></script>
</head><body>
<header><a class="brand" href="/console/jobs">afinar</a><nav aria-label="main">{nav}</nav></header>
<main id="page" data-page="{name}" {attrs}>
<h1>{html.escape(title)}</h1>
<div id="error" role="alert" class="error" hidden></div>
{body}
</main></body></html>""")


def _hp_fields() -> str:
    """The create-job form's hyperparameters, with the ranges and defaults the trainer takes."""
    from afinar.training.config import BEDROCK_ALIASES, TrainConfig, numeric_bounds

    rows = []
    for alias, field in BEDROCK_ALIASES.items():
        f = TrainConfig.model_fields[field]
        kind, lo, hi = numeric_bounds(field)
        default = "" if f.default in (None, "auto") else f.default
        empty = "off" if f.default is None else "auto"  # what an empty field means
        rng = f"{lo}-{hi}" if lo is not None and hi is not None else f"{empty} if empty"
        step = "any" if kind is float else "1"
        rows.append(
            f'<label>{alias} <small>({field}; {rng}; default {default if default != "" else empty})'
            f'</small><input type="number" name="{alias}" step="{step}"'
            f'{f" min={lo}" if lo is not None else ""}{f" max={hi}" if hi is not None else ""}'
            f' value="{default}" placeholder="{empty}"></label>')
    return "\n".join(rows)


LOGIN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · afinar</title>
<link rel="stylesheet" href="/console/static/app.css">
<script src="/console/static/login.js" defer></script>
</head><body>
<header><span class="brand">afinar</span></header>
<main id="page" data-page="login">
<h1>Sign in</h1>
<p>This server requires authentication. Enter one of its API keys (<code>api_keys</code> in
afinar.toml), or an access key as <code>ACCESS_KEY_ID:SECRET</code>.</p>
<div id="error" role="alert" class="error" hidden></div>
<form id="login-form">
 <label>API key <input name="apiKey" type="password" autocomplete="current-password" required>
 </label>
 <button type="submit">Sign in</button>
</form>
</main></body></html>"""


def router(settings, sessions) -> APIRouter:
    from afinar.serve import auth
    from afinar.serve.gate import SESSION_COOKIE, SESSION_TTL_S, _cookie

    r = APIRouter(include_in_schema=False)

    @r.get("/console/login")
    async def login_page():
        return HTMLResponse(LOGIN)

    @r.post("/console/login")
    async def login(request: Request):
        """{"apiKey": KEY or "ACCESS_KEY_ID:SECRET"} -> a session cookie (HttpOnly,
        SameSite=Strict) that the console's own requests carry."""

        try:
            key = jsonutil.loads(await request.body()).get("apiKey")
        except (ValueError, AttributeError):
            key = None
        if not isinstance(key, str) or not key:
            return JSONResponse({"message": "send {\"apiKey\": \"...\"}",
                                 "code": "ValidationException"}, status_code=400)
        akid, _, secret = key.partition(":")
        if not (auth.valid_api_key(settings, key)
                or (secret and auth.valid_access_key(settings, akid, secret))):
            return JSONResponse({"message": auth.INVALID, "code": "AccessDeniedException"},
                                status_code=401)
        resp = JSONResponse({"ok": True})
        resp.set_cookie(SESSION_COOKIE, sessions.start(), max_age=SESSION_TTL_S, httponly=True,
                        samesite="strict", path="/",
                        secure=request.url.scheme == "https")
        return resp

    @r.post("/console/logout")
    async def logout(request: Request):
        sessions.end(_cookie({"cookie": request.headers.get("cookie", "")}, SESSION_COOKIE))
        resp = JSONResponse({"ok": True})
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    @r.get("/")
    async def root():
        return RedirectResponse("/console/jobs")

    @r.get("/console")
    async def console_root():
        return RedirectResponse("/console/jobs")

    @r.get("/console/static/{path:path}")
    async def static(path: str):
        p = (STATIC / path).resolve()
        if STATIC not in p.parents or not p.is_file():
            return Response(status_code=404)
        return FileResponse(p, media_type=TYPES.get(p.suffix, "application/octet-stream"),
                            headers={"cache-control": "max-age=3600"})

    @r.get("/console/jobs")
    async def jobs():
        return page("jobs", "Jobs", """
<p><a class="button" href="/console/jobs/new">New job</a></p>
<form id="filters" class="row">
 <label>Status <select name="statusEquals"><option value="">any</option>
  <option>InProgress</option><option>Completed</option><option>Failed</option>
  <option>Stopping</option><option>Stopped</option></select></label>
 <label>Name contains <input name="nameContains"></label>
</form>
<table id="jobs"><thead><tr><th>Name</th><th>Status</th><th>Type</th><th>Base model</th>
<th>Custom model</th><th>Created</th></tr></thead><tbody></tbody></table>""")

    @r.get("/console/jobs/new")
    async def new_job():
        return page("job-new", "New customization job", f"""
<form id="job-form">
 <fieldset><legend>Job</legend>
 <label>Job name <input name="jobName" required pattern="[a-zA-Z0-9](-*[a-zA-Z0-9\\+\\-\\.])*"
   maxlength="63"></label>
 <label>Custom model name <input name="customModelName" required maxlength="63"></label>
 <label>Base model <select name="baseModelIdentifier" id="base-models" required></select></label>
 <label>Customization type <select name="customizationType">
   <option value="FINE_TUNING">FINE_TUNING (prompt/completion, messages)</option>
   <option value="CONTINUED_PRE_TRAINING">CONTINUED_PRE_TRAINING (plain text)</option></select></label>
 </fieldset>
 <fieldset><legend>Data</legend>
 <label>Training file (uploaded) <input type="file" name="trainingFile" accept=".jsonl,.json,.csv,.parquet,.txt"></label>
 <label>or its S3 URI <input name="trainingUri" placeholder="s3://bucket/train.jsonl"></label>
 <label>Validation file (optional) <input type="file" name="validationFile"></label>
 </fieldset>
 <fieldset><legend>Hyperparameters</legend>{_hp_fields()}</fieldset>
 <button type="submit">Create job</button>
</form>""")

    @r.get("/console/jobs/{name}")
    async def job(name: str):
        return page("job", f"Job {name}", """
<p id="failure" class="error" hidden></p>
<dl id="job-info" class="grid"></dl>
<h2>Status</h2><ul id="phases" class="phases"></ul>
<p><button id="stop" type="button" hidden>Stop</button> <a id="model-link" hidden>Open the custom model</a></p>
<h2>Loss</h2><div class="chart"><canvas id="loss-chart" aria-label="training and validation loss"></canvas></div>
<p id="points" class="muted"></p>
<h2>Event log</h2><ol id="events" class="log"></ol>""", {"job": name})

    @r.get("/console/data")
    async def data():
        return page("data", "Data check", """
<p>Check a dataset before training: schema, line-level errors, duplicates, lengths, class
balance and size guidance. Nothing is stored.</p>
<form id="check-form" class="row"><label>Upload a dataset <input type="file" name="file"></label>
<label>or pick one in storage <input name="s3Uri" placeholder="s3://bucket/train.jsonl" size="40"></label>
<button type="submit">Check</button></form>
<section id="report" hidden>
 <p id="summary"></p>
 <h2>Errors</h2><table id="errors"><thead><tr><th>Line</th><th>Field</th><th>Problem</th></tr>
 </thead><tbody></tbody></table>
 <h2>Warnings</h2><ul id="warnings"></ul>
 <h2>Lengths</h2><div class="chart"><canvas id="length-chart"></canvas></div>
 <h2>Labels</h2><div id="labels"></div>
 <h2>Size</h2><p id="size"></p>
</section>""")

    @r.get("/console/models")
    async def models():
        return page("models", "Models", """
<h2>Custom models</h2><table id="custom-models"><thead><tr><th>Name</th><th>Base model</th>
<th>Type</th><th>Created</th></tr></thead><tbody></tbody></table>
<h2>Base models</h2><table id="base-models-table"><thead><tr><th>Model id</th><th>Name</th>
<th>Provider</th><th>Customizations</th></tr></thead><tbody></tbody></table>""")

    @r.get("/console/models/{name}")
    async def model(name: str):
        return page("model", f"Model {name}", """
<p id="lineage" class="lineage"></p>
<dl id="model-info" class="grid"></dl>
<h2>Metrics</h2><dl id="model-metrics" class="grid"></dl>
<h2>Hyperparameters</h2><dl id="model-hp" class="grid"></dl>
<p><a id="try" class="button">Try it in the playground</a>
<button id="delete" type="button" class="danger">Delete</button></p>""", {"model": name})

    @r.get("/console/playground")
    async def playground():
        return page("playground", "Playground", """
<form id="play-form">
 <div class="row"><label>Model A <select name="a" class="model-select"></select></label>
 <label>Model B <select name="b" class="model-select"></select></label></div>
 <label>Prompt <textarea name="prompt" rows="3" required></textarea></label>
 <div class="row"><label>Max tokens <input type="number" name="max_tokens" value="64" min="1" max="1024"></label>
 <label>Temperature <input type="number" name="temperature" value="0" min="0" max="2" step="0.1"></label>
 <label>Top p <input type="number" name="top_p" value="1" min="0" max="1" step="0.05"></label></div>
 <button type="submit">Send to both</button>
</form>
<div class="row answers"><section><h2 id="a-name">A</h2><pre id="a-out" aria-live="polite"></pre></section>
<section><h2 id="b-name">B</h2><pre id="b-out" aria-live="polite"></pre></section></div>""")

    @r.get("/console/evaluations")
    async def evaluations():
        return page("evaluations", "Evaluation", """
<form id="eval-form" class="row">
 <label>Model <select name="model" class="model-select"></select></label>
 <label>Compare with its base <input type="checkbox" name="compareBase" checked></label>
 <label>Test data (S3 URI) <input name="data" required placeholder="s3://bucket/test.jsonl"></label>
 <label>Max examples <input type="number" name="maxExamples" value="20" min="1"></label>
 <button type="submit">Evaluate</button></form>
<table id="evals"><thead><tr><th>Id</th><th>Status</th><th>Models</th><th>Report</th></tr></thead>
<tbody></tbody></table>
<iframe id="report-frame" title="evaluation report" hidden></iframe>""")

    @r.get("/console/kb")
    async def kb():
        return page("kb", "Knowledge bases", """
<form id="kb-form" class="row"><label>Name <input name="name" required></label>
<button type="submit">Create knowledge base</button></form>
<table id="kbs"><thead><tr><th>Name</th><th>Id</th><th>Status</th><th>Updated</th></tr></thead>
<tbody></tbody></table>
<section id="kb-detail" hidden>
 <h2 id="kb-title"></h2>
 <form id="ds-form" class="row"><label>Data source: bucket <input name="bucket" required></label>
 <label>prefix <input name="prefix"></label><button type="submit">Add S3 data source</button></form>
 <ul id="sources"></ul>
 <p><button id="sync" type="button">Sync</button> <span id="sync-status"></span></p>
 <dl id="counters" class="grid"></dl>
 <form id="ask-form" class="row"><label>Question <input name="q" required size="50"></label>
 <label>Model <select name="model" class="model-select"></select></label>
 <button type="submit">Ask</button></form>
 <p id="answer" class="answer" aria-live="polite"></p>
 <ol id="citations"></ol>
</section>""")

    @r.get("/console/advisor")
    async def advisor():
        return page("advisor", "Advisor", """
<form id="advise-form">
 <label>Does the information change constantly? <select name="changing"><option>yes</option><option>no</option></select></label>
 <label>Labelled data <select name="labelled"><option>none</option><option>thousands</option><option>millions</option></select></label>
 <label>Budget <select name="budget"><option>low</option><option selected>medium</option><option>high</option></select></label>
 <label>Specialisation <select name="specialization"><option>information</option><option>task</option><option>domain</option></select></label>
 <button type="submit">Recommend</button></form>
<section id="advice" aria-live="polite"></section>""")

    @r.get("/console/catalog")
    async def catalog():
        return page("catalog", "Recipe catalog", """
<table id="recipes"><thead><tr><th>Recipe</th><th>Type</th><th>Base model</th><th>Description</th>
<th></th></tr></thead><tbody></tbody></table><p id="run-result" aria-live="polite"></p>""")

    return r
