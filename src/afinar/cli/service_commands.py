"""`afinar serve` and `afinar jobs ...`: the service and its client.

The client side is boto3's own Bedrock client pointed at the server, the same calls a user's
code makes, so the CLI exercises exactly the public API.
"""

from __future__ import annotations

import json
import os
import time

from afinar.cli.args import int_in
from afinar.cli.render import dump_json, err, out
from afinar.config import Settings, load_settings
from afinar.errors import AfinarError, ConfigError

TERMINAL = ("Completed", "Failed", "Stopped")


class ServiceError(AfinarError):
    """The server answered with an error (or could not be reached)."""


def _settings(args) -> Settings:
    return load_settings({"home": args.home})


def endpoint(args) -> str:
    if getattr(args, "endpoint", None):
        return args.endpoint
    env = os.environ.get("AFINAR_ENDPOINT")
    if env:
        return env
    s = _settings(args)
    host = "127.0.0.1" if s.host in ("0.0.0.0", "::") else s.host
    return f"http://{host}:{s.port}"


def client(args):
    import boto3
    from botocore.config import Config

    s = _settings(args)
    creds = {}
    if not (os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE")):
        akid, secret = next(iter(s.access_keys.items()), ("afinar", "afinar"))
        creds = {"aws_access_key_id": akid, "aws_secret_access_key": secret}
    return boto3.client("bedrock", endpoint_url=endpoint(args), region_name=s.region,
                        config=Config(retries={"max_attempts": 2}, connect_timeout=5,
                                      read_timeout=60), **creds)


def call(fn, **kw):
    from botocore.exceptions import ClientError, EndpointConnectionError

    try:
        return fn(**kw)
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "Error")
        raise ServiceError(f"{code}: {e.response.get('Error', {}).get('Message', e)}") from None
    except EndpointConnectionError as e:
        raise ServiceError(f"cannot reach the afinar server: {e}",
                           hint="start it with `afinar serve` or pass --endpoint") from None


# -- serve -----------------------------------------------------------------------------------
def add_serve(sub) -> None:
    p = sub.add_parser("serve", help="run the server: Bedrock customization jobs, Bedrock "
                       "runtime and OpenAI-compatible inference")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int_in(1, 65535), help="port (default 8080)")
    p.add_argument("--max-concurrent-jobs", type=int_in(1, 64), help="jobs that may train at once")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    from afinar.serve.app import serve

    s = load_settings({"home": args.home, "host": args.host, "port": args.port,
                       "max_concurrent_jobs": args.max_concurrent_jobs})
    serve(s, log_level=args.log_level, announce=err)
    return 0


# -- jobs ------------------------------------------------------------------------------------
def add_jobs(sub) -> None:
    p = sub.add_parser("jobs", help="model customization jobs on a running server")
    p.add_argument("--endpoint", help="server URL (default $AFINAR_ENDPOINT or "
                   "http://127.0.0.1:<port>)")
    js = p.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    c = js.add_parser("create", help="start a fine-tuning or continued pre-training job")
    c.add_argument("--name", required=True, help="job name (unique)")
    c.add_argument("--model-name", required=True, help="name of the custom model to create")
    c.add_argument("--base-model", default=None, help="base model id, alias or custom model")
    c.add_argument("--train", required=True, help="training data URI (s3://, file:// or path)")
    c.add_argument("--validation", help="validation data URI")
    c.add_argument("--output", required=True, help="output URI prefix")
    c.add_argument("--type", default="FINE_TUNING",
                   choices=["FINE_TUNING", "CONTINUED_PRE_TRAINING"])
    c.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE",
                   help="hyperparameter, e.g. epochCount=2 (repeatable)")
    c.add_argument("--wait", action="store_true", help="follow the log until the job ends")
    c.set_defaults(func=cmd_jobs_create)
    ls = js.add_parser("list", help="list jobs")
    ls.add_argument("--status", choices=["InProgress", "Completed", "Failed", "Stopping",
                                         "Stopped"])
    ls.add_argument("--name-contains")
    ls.add_argument("--max", type=int_in(1, 1000), default=50)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_jobs_list)
    for name, fn, hlp in (("get", cmd_jobs_get, "one job's details"),
                          ("stop", cmd_jobs_stop, "stop a job (checkpoints are kept)"),
                          ("resume", cmd_jobs_resume, "resume a Failed or Stopped job from its "
                                                      "last checkpoint")):
        g = js.add_parser(name, help=hlp)
        g.add_argument("job", help="job name or ARN")
        g.add_argument("--json", action="store_true")
        g.set_defaults(func=fn)
    lg = js.add_parser("logs", help="a job's event log")
    lg.add_argument("job", help="job name or ARN")
    lg.add_argument("--follow", "-f", action="store_true", help="keep printing until it ends")
    lg.set_defaults(func=cmd_jobs_logs)


def cmd_jobs_create(args) -> int:
    hp = {}
    for item in args.hp:
        if "=" not in item:
            raise ConfigError(f"--hp '{item}' is not KEY=VALUE", hint="e.g. --hp epochCount=2")
        k, v = item.split("=", 1)
        hp[k.strip()] = v.strip()
    s = _settings(args)
    req = {"jobName": args.name, "customModelName": args.model_name,
           "roleArn": "arn:aws:iam::000000000000:role/afinar",
           "baseModelIdentifier": args.base_model or s.default_model,
           "trainingDataConfig": {"s3Uri": args.train},
           "outputDataConfig": {"s3Uri": args.output},
           "customizationType": args.type, "hyperParameters": hp}
    if args.validation:
        req["validationDataConfig"] = {"validators": [{"s3Uri": args.validation}]}
    res = call(client(args).create_model_customization_job, **req)
    out(res["jobArn"])
    if args.wait:
        args.job, args.follow = args.name, True
        return cmd_jobs_logs(args)
    return 0


def cmd_jobs_list(args) -> int:
    kw = {"maxResults": min(args.max, 1000)}
    if args.status:
        kw["statusEquals"] = args.status
    if args.name_contains:
        kw["nameContains"] = args.name_contains
    res = call(client(args).list_model_customization_jobs, **kw)
    jobs = res["modelCustomizationJobSummaries"]
    if args.json:
        dump_json(jobs)
        return 0
    if not jobs:
        out("no jobs")
    for j in jobs:
        out(f"{j['jobName']:<32} {j['status']:<11} {j['creationTime']:%Y-%m-%d %H:%M:%S}  "
            f"-> {j.get('customModelName', '')}")
    return 0


def _phases(job: dict) -> str:
    d = job.get("statusDetails") or {}
    return ", ".join(f"{k.replace('Details', '')} {v.get('status')}" for k, v in d.items())


def cmd_jobs_get(args) -> int:
    job = call(client(args).get_model_customization_job, jobIdentifier=args.job)
    job.pop("ResponseMetadata", None)
    if args.json:
        dump_json(job)
        return 0
    out(f"{job['jobName']}: {job['status']} ({_phases(job)})")
    out(f"  arn:          {job['jobArn']}")
    out(f"  base model:   {job['baseModelArn']}")
    out(f"  custom model: {job['outputModelName']}"
        + (f" ({job['outputModelArn']})" if job.get("outputModelArn") else ""))
    if job.get("trainingMetrics"):
        out(f"  training loss: {job['trainingMetrics'].get('trainingLoss')}")
    if job.get("validationMetrics"):
        out(f"  validation loss: {job['validationMetrics'][0].get('validationLoss')}")
    if job.get("failureMessage"):
        out(f"  failure: {job['failureMessage']}")
    return 0


def cmd_jobs_stop(args) -> int:
    call(client(args).stop_model_customization_job, jobIdentifier=args.job)
    out(f"stop requested for {args.job}")
    return 0


def _afinar_api(args, method: str, path: str) -> dict:
    """One call to afinar's own routes (/afinar/...), with the first api key when configured."""
    import urllib.error
    import urllib.request

    base = endpoint(args).rstrip("/")
    s = _settings(args)
    headers = {"Authorization": f"Bearer {s.api_keys[0]}"} if s.api_keys else {}
    req = urllib.request.Request(base + path, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            body = json.loads(e.read() or b"{}")
        except ValueError:
            body = {}
        raise ServiceError(f"{e.headers.get('x-amzn-ErrorType', e.code)}: "
                           f"{body.get('message', e.reason)}") from None
    except urllib.error.URLError as e:
        raise ServiceError(f"cannot reach the afinar server at {base}: {e.reason}",
                           hint="start it with `afinar serve` or pass --endpoint") from None


def cmd_jobs_resume(args) -> int:
    import urllib.parse

    res = _afinar_api(args, "POST", f"/afinar/jobs/{urllib.parse.quote(args.job, safe='')}"
                                    f"/resume")
    if args.json:
        dump_json(res)
    else:
        out(f"{args.job} resumed " + (f"from {res['resumeFrom']}" if res.get("resumeFrom")
                                      else "(no checkpoint kept: training starts over)"))
    return 0


def cmd_jobs_logs(args) -> int:
    import urllib.parse

    after, status = 0, None
    while True:
        data = _afinar_api(args, "GET", f"/afinar/jobs/{urllib.parse.quote(args.job, safe='')}"
                                        f"/events?after={after}")
        for ev in data["events"]:
            out(f"{ev['time'][:19]}  {ev['level']:<5} {ev['message']}")
            after = ev["id"]
        status = data["status"]
        if not args.follow or (status in TERMINAL and not data["events"]):
            break
        time.sleep(1)
    return 0 if status != "Failed" else 1


REGISTRY = [add_serve, add_jobs]
