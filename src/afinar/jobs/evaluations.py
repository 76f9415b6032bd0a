"""Evaluation jobs: Bedrock's CreateEvaluationJob, Get, List and Stop, and afinar's own
`/afinar/evaluations` (models compared on a dataset, the console's evaluation page), as jobs of
kind "evaluation" in the one store, scheduler and worker (the worker runs jobs/evaluate.py).

A Bedrock request is checked here, before any compute (metric names, models, the judge, the
knowledge base, the locations), and turned into a plan (eval/automated.py) kept with the
request. afinar's own request ({"models", "data", "compareBase", "maxExamples"}) runs
eval/compare.py, as `afinar eval` does. Both write afinar's report (report.html) in the job's
directory; Bedrock jobs also write Bedrock's output layout under outputDataConfig.s3Uri.
"""

from __future__ import annotations

import json
import secrets

from sqlalchemy import and_, select

from afinar import db
from afinar.errors import AfinarError, InvalidRequest, ModelNotFoundError, NotFound
from afinar.eval.automated import ALGORITHMIC, RETRIEVAL, UNSUPPORTED
from afinar.eval.judge import BUILTIN, RETRIEVAL_ONLY, custom_rubric
from afinar.jobs.arns import short_id
from afinar.storage import StorageError

KIND = "evaluation"
MAX_MODELS = 8  # afinar's own evaluations compare up to this many models
TASK_TYPES = ("Summarization", "Classification", "QuestionAndAnswer", "Generation", "Custom")
PARAMS = {"maxTokens": int, "temperature": (int, float), "topP": (int, float)}


def _params(raw: str | None, where: str) -> dict:
    """inferenceParams: Bedrock's JSON string ({"inferenceConfig": {"maxTokens", ...}})."""
    if not raw:
        return {}
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        raise InvalidRequest(f"{where}: not JSON ({e.msg})") from None
    cfg = obj.get("inferenceConfig", obj) if isinstance(obj, dict) else None
    if not isinstance(cfg, dict):
        raise InvalidRequest(f"{where}: expected {{\"inferenceConfig\": {{\"maxTokens\": ..., "
                             f"\"temperature\": ..., \"topP\": ...}}}}")
    out = {}
    for k, v in cfg.items():
        if k not in PARAMS:
            raise InvalidRequest(f"{where}: '{k}' is not supported; afinar takes "
                                 f"{', '.join(PARAMS)}")
        if isinstance(v, bool) or not isinstance(v, PARAMS[k]):
            raise InvalidRequest(f"{where}.{k} must be a number")
        out[k] = v
    if not 1 <= out.get("maxTokens", 1) <= 4096:
        raise InvalidRequest(f"{where}.maxTokens must be 1-4096")
    return out


class EvaluationJobs:
    def __init__(self, service):
        self.svc = service  # JobService: settings, store, storage, ARNs, scheduler, model ids

    def _served(self, ident: str, where: str) -> str:
        from afinar.models.registry import check_served

        try:
            sid = self.svc.serving_id(ident)
            check_served(sid, self.svc.settings)
        except (ModelNotFoundError, NotFound) as e:
            raise InvalidRequest(f"{where}: {e.message}" + (f"; {e.hint}" if e.hint else "")
                                 ) from None
        return sid

    def _locate(self, uri: str, where: str) -> None:
        try:
            self.svc.storage.locate(uri, where)
        except StorageError as e:
            raise InvalidRequest(str(e)) from None

    # -- CreateEvaluationJob -----------------------------------------------------------------
    def create(self, req: dict) -> dict:
        s = self.svc
        token = req.get("clientRequestToken")
        if (done := s.by_token(KIND, token, req)) is not None:
            return done
        for k in ("customerEncryptionKeyId", "jobTags"):
            if req.get(k):
                raise InvalidRequest(f"{k} is not supported by afinar; remove it")
        ev = req["evaluationConfig"]
        if "human" in ev:
            raise InvalidRequest("evaluationConfig.human: afinar runs automated evaluations "
                                 "only (no human work teams); use evaluationConfig.automated")
        auto = ev.get("automated")
        if not auto:
            raise InvalidRequest("evaluationConfig.automated is required")
        rag_app = req.get("applicationType") == "RagEvaluation"
        job_id = short_id()
        plan: dict = {"jobName": req["jobName"], "jobId": job_id, "datasets": [],
                      "models": [], "customMetrics": []}
        # the judge and custom metrics
        judge = ((auto.get("evaluatorModelConfig") or {}).get("bedrockEvaluatorModels")
                 or [{}])[0].get("modelIdentifier")
        cm = auto.get("customMetricConfig")
        if cm:
            cjudge = cm["evaluatorModelConfig"]["bedrockEvaluatorModels"][0]["modelIdentifier"]
            if judge and cjudge != judge:
                raise InvalidRequest("customMetricConfig.evaluatorModelConfig: afinar uses one "
                                     "judge per job; give the same model as "
                                     "evaluatorModelConfig")
            judge = judge or cjudge
            for i, src in enumerate(cm["customMetrics"]):
                defn = src.get("customMetricDefinition")
                where = f"customMetricConfig.customMetrics[{i}]"
                if not defn:
                    raise InvalidRequest(f"{where}: give a customMetricDefinition")
                custom_rubric(defn, where)  # checked now, used by the worker
                plan["customMetrics"].append(defn)
        custom_names = {d["name"] for d in plan["customMetrics"]}
        if judge:
            plan["judge"] = self._served(
                judge, "evaluationConfig.automated.evaluatorModelConfig.bedrockEvaluatorModels"
                "[0].modelIdentifier")
        # datasets and their metrics
        configs = auto["datasetMetricConfigs"]
        if rag_app and len(configs) != 1:
            raise InvalidRequest("datasetMetricConfigs: a RAG evaluation takes one dataset")
        for i, d in enumerate(configs):
            where = f"evaluationConfig.automated.datasetMetricConfigs[{i}]"
            loc = (d["dataset"].get("datasetLocation") or {}).get("s3Uri")
            if not loc:
                raise InvalidRequest(f"{where}.dataset.datasetLocation.s3Uri: afinar has no "
                                     f"built-in datasets (it runs offline); give your "
                                     f"dataset's location")
            self._locate(loc, f"{where}.dataset.datasetLocation.s3Uri")
            if d["taskType"] not in TASK_TYPES:
                raise InvalidRequest(f"{where}.taskType must be one of {', '.join(TASK_TYPES)}")
            names = list(dict.fromkeys(d["metricNames"]))
            for n in names:
                self._check_metric(n, where, rag_app, custom_names, judge)
            plan["datasets"].append({"name": d["dataset"]["name"], "taskType": d["taskType"],
                                     "uri": loc, "metricNames": names})
        names_all = {n for d in plan["datasets"] for n in d["metricNames"]}
        inf = req["inferenceConfig"]
        if rag_app:
            plan["rag"] = self._rag(inf, names_all)
        else:
            if inf.get("ragConfigs") or not inf.get("models"):
                raise InvalidRequest("inferenceConfig.models is required for a model "
                                     "evaluation (ragConfigs are for applicationType "
                                     "RagEvaluation)")
            if names_all & (RETRIEVAL | RETRIEVAL_ONLY | {"Builtin.Faithfulness"}):
                raise InvalidRequest(f"metricNames "
                                     f"{sorted(names_all & (RETRIEVAL | RETRIEVAL_ONLY | {'Builtin.Faithfulness'}))} "  # noqa: E501
                                     f"need retrieved passages: use applicationType "
                                     f"RagEvaluation")
            for i, m in enumerate(inf["models"]):
                where = f"inferenceConfig.models[{i}]"
                if "bedrockModel" in m:
                    bm = m["bedrockModel"]
                    if bm.get("performanceConfig"):
                        raise InvalidRequest(f"{where}.bedrockModel.performanceConfig is not "
                                             f"supported; remove it")
                    plan["models"].append({
                        "id": bm["modelIdentifier"],
                        "serving": self._served(bm["modelIdentifier"],
                                                f"{where}.bedrockModel.modelIdentifier"),
                        "params": _params(bm.get("inferenceParams"),
                                          f"{where}.bedrockModel.inferenceParams")})
                elif "precomputedInferenceSource" in m:
                    src = m["precomputedInferenceSource"]["inferenceSourceIdentifier"]
                    plan["models"].append({"id": src, "precomputed": src})
                else:
                    raise InvalidRequest(f"{where}: give bedrockModel or "
                                         f"precomputedInferenceSource")
        self._locate(req["outputDataConfig"]["s3Uri"], "outputDataConfig.s3Uri")
        s.check_quota()
        now = db.now()
        row = dict(id=job_id, arn=s.arns.evaluation_job(job_id), name=req["jobName"],
                   client_token=token, status="InProgress", customization_type="",
                   base_model=(plan["models"] or [{"id": ""}])[0]["id"], base_model_arn="",
                   output_model_name="", request=req, status_details={"plan": plan},
                   created_at=now, updated_at=now, attempts=0, kind=KIND)
        what = (f"knowledge base {plan['rag']['knowledgeBaseId']}" if rag_app else
                ", ".join(m["id"] for m in plan["models"]))
        s.add_job(row, f"evaluation job created: {what} on "
                  f"{', '.join(d['name'] for d in plan['datasets'])}")
        return {"jobArn": row["arn"]}

    def _check_metric(self, n: str, where: str, rag_app: bool, custom: set[str],
                      judge: str | None) -> None:
        if n in UNSUPPORTED:
            raise InvalidRequest(f"{where}.metricNames: {n} is not available in afinar: "
                                 f"{UNSUPPORTED[n]}")
        if n in custom or n in BUILTIN:
            if not judge:
                raise InvalidRequest(f"{where}.metricNames: {n} is scored by a judge model; "
                                     f"give evaluationConfig.automated.evaluatorModelConfig")
            return
        if n in RETRIEVAL and rag_app:
            return
        if n in ALGORITHMIC and not rag_app:
            return
        known = sorted(BUILTIN) + (sorted(RETRIEVAL) if rag_app else sorted(ALGORITHMIC))
        raise InvalidRequest(f"{where}.metricNames: unknown metric '{n}'; afinar computes "
                             f"{', '.join(known)} and the custom metrics of "
                             f"customMetricConfig")

    def _rag(self, inf: dict, names: set[str]) -> dict:
        from afinar.rag.kb import KnowledgeBases

        where = "inferenceConfig.ragConfigs[0]"
        cfgs = inf.get("ragConfigs") or []
        if inf.get("models") or len(cfgs) != 1:
            raise InvalidRequest("inferenceConfig: a RAG evaluation takes one ragConfigs entry "
                                 "and no models")
        kbc = cfgs[0].get("knowledgeBaseConfig")
        if not kbc:
            raise InvalidRequest(f"{where}: precomputed RAG sources are not supported; give "
                                 f"knowledgeBaseConfig")
        if "retrieveConfig" in kbc:
            rc, gen, mode = kbc["retrieveConfig"], None, "retrieve"
            kb_id, rconf = rc["knowledgeBaseId"], rc["knowledgeBaseRetrievalConfiguration"]
            bad = names - RETRIEVAL - RETRIEVAL_ONLY
            if bad:
                raise InvalidRequest(f"metricNames {sorted(bad)} judge a generated answer; a "
                                     f"retrieveConfig evaluation has none (use "
                                     f"retrieveAndGenerateConfig, or "
                                     f"{', '.join(sorted(RETRIEVAL | RETRIEVAL_ONLY))})")
        else:
            rg = kbc["retrieveAndGenerateConfig"]
            if rg["type"] != "KNOWLEDGE_BASE":
                raise InvalidRequest(f"{where}.retrieveAndGenerateConfig.type: afinar "
                                     f"evaluates KNOWLEDGE_BASE sources only")
            kc = rg["knowledgeBaseConfiguration"]
            kb_id, mode = kc["knowledgeBaseId"], "retrieveAndGenerate"
            rconf = kc.get("retrievalConfiguration") or {"vectorSearchConfiguration": {}}
            for k in ("orchestrationConfiguration",):
                if kc.get(k):
                    raise InvalidRequest(f"{where}...knowledgeBaseConfiguration.{k} is not "
                                         f"supported; remove it")
            g = kc.get("generationConfiguration") or {}
            if g.get("guardrailConfiguration") or g.get("additionalModelRequestFields"):
                raise InvalidRequest(f"{where}: generationConfiguration takes promptTemplate "
                                     f"and kbInferenceConfig in afinar")
            gen = self._served(kc["modelArn"], f"{where}.retrieveAndGenerateConfig."
                               f"knowledgeBaseConfiguration.modelArn")
            t = (g.get("kbInferenceConfig") or {}).get("textInferenceConfig") or {}
            if t.get("stopSequences"):
                raise InvalidRequest(f"{where}: textInferenceConfig.stopSequences is not "
                                     f"supported")
        vs = rconf.get("vectorSearchConfiguration") or {}
        for k in ("implicitFilterConfiguration", "rerankingConfiguration"):
            if vs.get(k):
                raise InvalidRequest(f"{where}: vectorSearchConfiguration.{k} is not "
                                     f"supported; remove it")
        try:
            KnowledgeBases(self.svc.settings, self.svc.engine).get(kb_id)
        except AfinarError as e:
            raise InvalidRequest(f"{where}: {e.message}") from None
        out = {"knowledgeBaseId": kb_id, "mode": mode, "k": vs.get("numberOfResults") or 5,
               "searchType": vs.get("overrideSearchType"), "filter": vs.get("filter")}
        if gen:
            out["generator"] = gen
            out["template"] = (g.get("promptTemplate") or {}).get("textPromptTemplate")
            out["params"] = {k: t[k] for k in ("maxTokens", "temperature", "topP") if k in t}
        return out

    # -- afinar's own evaluations ------------------------------------------------------------
    def create_afinar(self, body: dict, local: bool = False) -> dict:
        """{"models", "data", "compareBase", "maxExamples", "maxNewTokens", "batchSize"} -> the
        evaluation's afinar shape. `local`: created by `afinar eval` for the machine's user,
        who may name any path or hub id (over HTTP, ids and data are confined)."""
        fields = ("models", "data", "compareBase", "maxExamples", "maxNewTokens", "batchSize")
        unknown = set(body) - set(fields)
        if unknown:
            raise InvalidRequest(f"unknown field(s) {sorted(unknown)[:5]}; an evaluation takes "
                                 f"{', '.join(fields)}")
        models = body.get("models")
        if not isinstance(models, list) or not 0 < len(models) <= MAX_MODELS or not all(
                isinstance(m, str) and m for m in models):
            raise InvalidRequest(f"'models' must be a list of 1-{MAX_MODELS} model ids")
        if not isinstance(body.get("data"), str):
            raise InvalidRequest("'data' must be a URI (s3://, file://) or a path")
        if not local:
            for i, m in enumerate(models):
                self._served(m, f"models[{i}]")
            self._locate(body["data"], "data")
        for k, hi in (("maxExamples", 1_000_000), ("maxNewTokens", 32768), ("batchSize", 1024)):
            v = body.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)
                                  or not 1 <= v <= hi):
                raise InvalidRequest(f"'{k}' must be an integer from 1 to {hi}; got "
                                     f"{json.dumps(v)[:40]}")
        if not isinstance(body.get("compareBase", False), bool):
            raise InvalidRequest("'compareBase' must be true or false")
        s = self.svc
        s.check_quota()
        job_id, now = short_id(), db.now()
        name = "eval-" + secrets.token_hex(6)
        row = dict(id=job_id, arn=s.arns.evaluation_job(job_id), name=name, client_token=None,
                   status="InProgress", customization_type="", base_model=models[0],
                   base_model_arn="", output_model_name="",
                   request={"afinar": body, "local": local},
                   status_details={}, created_at=now, updated_at=now, attempts=0, kind=KIND)
        s.add_job(row, f"evaluation created: {', '.join(models)} on {body['data']}")
        return self.get_afinar(name)

    def _afinar_shape(self, r) -> dict:
        req = r.request.get("afinar")
        status = "Queued" if r.status == "InProgress" and r.worker_pid is None else r.status
        out = {"id": r.name, "jobArn": r.arn, "status": status,
               "models": req["models"] if req else [m["id"] for m in
                                                     r.status_details["plan"]["models"]],
               "data": req["data"] if req else ", ".join(
                   d["uri"] for d in r.status_details["plan"]["datasets"]),
               "compareBase": bool(req and req.get("compareBase")),
               "creationTime": db.as_utc(r.created_at).timestamp(),
               "endTime": db.as_utc(r.end_time).timestamp() if r.end_time else None}
        if r.failure_message:
            out["failureMessage"] = r.failure_message
        rep = self.svc.settings.jobs_dir / r.id / "report"
        if r.status == "Completed" and (rep / "report.json").exists():
            data = json.loads((rep / "report.json").read_text(encoding="utf-8"))
            out["metrics"] = {m["id"]: m["metrics"] for m in data["models"]}
            out["task"] = data.get("task")
            out["report"] = {k: str(rep / f"report.{k}") for k in ("md", "html", "json")}
        return out

    def get_afinar(self, ident: str) -> dict:
        return self._afinar_shape(self._row(ident))

    def list_afinar(self) -> list[dict]:
        with self.svc.engine.connect() as c:
            rows = c.execute(select(db.jobs).where(db.jobs.c.kind == KIND).order_by(
                db.jobs.c.created_at)).all()
        return [self._afinar_shape(r) for r in rows]

    def report_html(self, ident: str) -> str:
        p = self.svc.settings.jobs_dir / self._row(ident).id / "report" / "report.html"
        if not p.exists():
            raise NotFound(f"evaluation '{ident}' has no report (yet)")
        return p.read_text(encoding="utf-8")

    # -- Get / List / Stop -------------------------------------------------------------------
    def _row(self, ident: str):
        return self.svc.row_of(KIND, ident, f"no evaluation job '{ident}'; list them with "
                               f"ListEvaluationJobs")

    def _shape(self, r) -> dict:
        req = r.request
        if "afinar" in req:  # afinar's own evaluation, seen through Bedrock's API
            b = req["afinar"]
            req = {"roleArn": "", "evaluationConfig": {"automated": {"datasetMetricConfigs": [
                {"taskType": "Generation", "dataset": {"name": "data", "datasetLocation": {
                    "s3Uri": b["data"]}}, "metricNames": ["exact_match"]}]}},
                "inferenceConfig": {"models": [{"bedrockModel": {"modelIdentifier": m}}
                                               for m in b["models"]]},
                "outputDataConfig": {"s3Uri": f"file://{self.svc.settings.jobs_dir / r.id}"}}
        out = {"jobName": r.name, "status": r.status, "jobArn": r.arn,
               "jobDescription": req.get("jobDescription"), "roleArn": req["roleArn"],
               "jobType": "Automated",
               "applicationType": req.get("applicationType") or "ModelEvaluation",
               "evaluationConfig": req["evaluationConfig"],
               "inferenceConfig": req["inferenceConfig"],
               "outputDataConfig": req["outputDataConfig"],
               "creationTime": db.as_utc(r.created_at),
               "lastModifiedTime": db.as_utc(r.updated_at)}
        if r.failure_message:
            out["failureMessages"] = [r.failure_message[:2000]]
        return {k: v for k, v in out.items() if v is not None}

    def get(self, ident: str) -> dict:
        return self._shape(self._row(ident))

    def list(self, p: dict) -> dict:
        from afinar.jobs.service import list_filters, page

        conds, order = list_filters(KIND, p)
        with self.svc.engine.connect() as c:
            rows = c.execute(select(db.jobs).where(and_(*conds)).order_by(*order)).all()
        out = []
        for r in rows:
            x = self._shape(r)
            if p.get("applicationTypeEquals") and x["applicationType"] != \
                    p["applicationTypeEquals"]:
                continue
            cfgs = x["evaluationConfig"]["automated"]["datasetMetricConfigs"]
            models = [m["bedrockModel"]["modelIdentifier"]
                      for m in x["inferenceConfig"].get("models") or [] if "bedrockModel" in m]
            pre = [m["precomputedInferenceSource"]["inferenceSourceIdentifier"]
                   for m in x["inferenceConfig"].get("models") or []
                   if "precomputedInferenceSource" in m]
            kbs = [self._kb_of(c) for c in x["inferenceConfig"].get("ragConfigs") or []]
            judge = ((x["evaluationConfig"]["automated"].get("evaluatorModelConfig") or {})
                     .get("bedrockEvaluatorModels") or [])
            summary = {"jobArn": x["jobArn"], "jobName": x["jobName"], "status": x["status"],
                       "creationTime": x["creationTime"], "jobType": "Automated",
                       "evaluationTaskTypes": list(dict.fromkeys(c["taskType"] for c in cfgs)),
                       "modelIdentifiers": models, "applicationType": x["applicationType"],
                       "evaluatorModelIdentifiers": [j["modelIdentifier"] for j in judge],
                       "inferenceConfigSummary": {
                           "modelConfigSummary": {
                               "bedrockModelIdentifiers": models,
                               "precomputedInferenceSourceIdentifiers": pre},
                           "ragConfigSummary": {"bedrockKnowledgeBaseIdentifiers": kbs}}}
            if kbs:
                summary["ragIdentifiers"] = kbs
            out.append(summary)
        return page(out, p, "jobSummaries")

    @staticmethod
    def _kb_of(cfg: dict) -> str:
        kbc = cfg.get("knowledgeBaseConfig") or {}
        if "retrieveConfig" in kbc:
            return kbc["retrieveConfig"]["knowledgeBaseId"]
        return kbc["retrieveAndGenerateConfig"]["knowledgeBaseConfiguration"]["knowledgeBaseId"]

    def stop(self, ident: str) -> dict:
        return self.svc.stop_row(self._row(ident), "InProgress")
