"""Knowledge bases over HTTP, shaped as botocore's `bedrock-agent` (knowledge bases, data
sources, ingestion jobs, documents) and `bedrock-agent-runtime` (Retrieve,
RetrieveAndGenerate), so the real boto3 clients work with only `endpoint_url` changed.

Handlers take the parsed, validated parameters (awsproto.py) and return plain dicts that
awsproto shapes into the modelled output. Ingestion jobs run one at a time on a background
thread; embedding loads torch on first use, never at server start.
"""

from __future__ import annotations

import collections
import threading
import uuid

from afinar.errors import AfinarError, ConfigError
from afinar.rag.kb import KnowledgeBases
from afinar.serve.awsproto import ApiError, validation
from afinar.serve.errors import aws_error

AGENT_OPERATIONS = (
    "CreateKnowledgeBase", "GetKnowledgeBase", "ListKnowledgeBases", "DeleteKnowledgeBase",
    "CreateDataSource", "GetDataSource", "ListDataSources", "DeleteDataSource",
    "StartIngestionJob", "StopIngestionJob", "GetIngestionJob", "ListIngestionJobs",
    "IngestKnowledgeBaseDocuments", "DeleteKnowledgeBaseDocuments",
    "GetKnowledgeBaseDocuments", "ListKnowledgeBaseDocuments")
AGENT_RUNTIME_OPERATIONS = ("Retrieve", "RetrieveAndGenerate")
# Bedrock's hosted embedding models have no local weights; map them with [model_aliases]
HOSTED_EMBEDDINGS = ("amazon.titan-embed", "cohere.embed", "amazon.nova")
MAX_SESSIONS = 1000
DEFAULT_RAG_MAX_TOKENS = 256


def api_errors(fn):
    """afinar's typed errors -> Bedrock's modelled exceptions."""
    def wrapped(*a, **kw):
        try:
            return fn(*a, **kw)
        except ApiError:
            raise
        except AfinarError as e:
            raise aws_error(e) from None
        except ValueError as e:  # storage errors (outside the bucket root, ...)
            raise validation(str(e)) from None
    return wrapped


def _page(items: list, p: dict, default: int = 100) -> tuple[list, str | None]:
    try:
        start = int(p.get("nextToken") or 0)
    except ValueError:
        raise validation("nextToken is not one this server issued") from None
    n = p.get("maxResults") or default
    return items[start:start + n], (str(start + n) if start + n < len(items) else None)


class KnowledgeService:
    def __init__(self, settings, get_engine, jobs):
        from afinar.jobs.ingestion import IngestionJobs

        self.settings = settings
        self.kbs = KnowledgeBases(settings, jobs.engine)
        self.kbs.fail_interrupted_jobs()
        self.get_engine, self.serving_id = get_engine, jobs.serving_id
        self.ingestions = IngestionJobs(jobs, self.kbs)  # run by the job system's workers
        self.sessions: collections.OrderedDict[str, list] = collections.OrderedDict()
        self.lock = threading.Lock()

    # -- shapes ------------------------------------------------------------------------------
    def _kb_out(self, kb: dict) -> dict:
        cfg = kb["config"] or {}
        kbc = cfg.get("knowledgeBaseConfiguration") or {
            "type": "VECTOR", "vectorKnowledgeBaseConfiguration": {
                "embeddingModelArn": kb["embedding_model"]}}
        return {"knowledgeBaseId": kb["id"], "name": kb["name"], "knowledgeBaseArn": kb["arn"],
                "description": kb["description"], "roleArn": kb["role_arn"] or "",
                "knowledgeBaseConfiguration": kbc,
                "storageConfiguration": cfg.get("storageConfiguration"),
                "status": kb["status"], "createdAt": kb["created_at"],
                "updatedAt": kb["updated_at"]}

    @staticmethod
    def _ds_out(s: dict) -> dict:
        return {"knowledgeBaseId": s["kb_id"], "dataSourceId": s["id"], "name": s["name"],
                "status": s["status"], "description": s["description"],
                "dataSourceConfiguration": s["config"]["dataSourceConfiguration"],
                "vectorIngestionConfiguration": s["config"]["vectorIngestionConfiguration"],
                "dataDeletionPolicy": s["deletion_policy"], "createdAt": s["created_at"],
                "updatedAt": s["updated_at"]}

    @staticmethod
    def _job_out(j: dict) -> dict:
        return {"knowledgeBaseId": j["kb_id"], "dataSourceId": j["source_id"],
                "ingestionJobId": j["id"], "description": j["description"],
                "status": j["status"], "statistics": j["statistics"],
                "failureReasons": j["failure_reasons"] or None, "startedAt": j["started_at"],
                "updatedAt": j["updated_at"]}

    # -- knowledge bases -------------------------------------------------------------------
    def embedding_model(self, arn: str) -> str:
        from afinar.models.ids import canonical
        from afinar.models.registry import check_kind

        ident = canonical(arn, self.settings)
        check_kind(ident, self.settings, "encoder", arn)
        tail = ident.rsplit("/", 1)[-1] if ident.startswith("arn:") else ident
        for cand in (ident, tail):
            if cand in self.settings.model_aliases:
                return self.settings.model_aliases[cand]
        if tail.startswith(HOSTED_EMBEDDINGS):
            raise validation(
                f"knowledgeBaseConfiguration.vectorKnowledgeBaseConfiguration.embeddingModelArn:"
                f" '{tail}' is a hosted Bedrock model with no local weights; use "
                f"all-minilm-l6-v2 (or any sentence-transformers model), or map '{tail}' to "
                f"one under [model_aliases] in afinar.toml")
        return tail

    @api_errors
    def create_kb(self, p: dict) -> dict:
        cfg = p["knowledgeBaseConfiguration"]
        if cfg["type"] != "VECTOR" or not cfg.get("vectorKnowledgeBaseConfiguration"):
            raise validation("knowledgeBaseConfiguration.type: afinar knowledge bases are "
                             "VECTOR knowledge bases (with vectorKnowledgeBaseConfiguration)")
        arn = cfg["vectorKnowledgeBaseConfiguration"]["embeddingModelArn"]
        model = self.embedding_model(arn)
        aliased = model in self.settings.model_aliases.values()  # the operator's mapping
        kb = self.kbs.create(p["name"], model, confined=not aliased, description=p.get("description"),
                             role_arn=p["roleArn"], config={
                                 "knowledgeBaseConfiguration": cfg,
                                 "storageConfiguration": p.get("storageConfiguration")})
        return {"knowledgeBase": self._kb_out(kb)}

    @api_errors
    def get_kb(self, p: dict) -> dict:
        return {"knowledgeBase": self._kb_out(self.kbs.get(p["knowledgeBaseId"]))}

    @api_errors
    def list_kbs(self, p: dict) -> dict:
        page, token = _page(self.kbs.list(), p)
        return {"knowledgeBaseSummaries": [
            {"knowledgeBaseId": k["id"], "name": k["name"], "description": k["description"],
             "status": k["status"], "updatedAt": k["updated_at"]} for k in page],
            "nextToken": token}

    @api_errors
    def delete_kb(self, p: dict) -> dict:
        kb = self.kbs.delete(p["knowledgeBaseId"])
        return {"knowledgeBaseId": kb["id"], "status": "DELETING"}

    # -- data sources ----------------------------------------------------------------------
    @api_errors
    def create_ds(self, p: dict) -> dict:
        dsc = p["dataSourceConfiguration"]
        chunking = ((p.get("vectorIngestionConfiguration") or {}).get("chunkingConfiguration"))
        if dsc["type"] == "S3":
            s3 = dsc.get("s3Configuration") or {}
            bucket_arn = s3.get("bucketArn", "")
            if not bucket_arn.startswith("arn:aws:s3:::"):
                raise validation("dataSourceConfiguration.s3Configuration.bucketArn: expected "
                                 "arn:aws:s3:::<bucket>")
            prefixes = s3.get("inclusionPrefixes") or [""]
            if len(prefixes) > 1:
                raise validation("dataSourceConfiguration.s3Configuration.inclusionPrefixes: "
                                 "afinar takes one prefix per data source")
            uri = f"s3://{bucket_arn.removeprefix('arn:aws:s3:::')}/{prefixes[0]}"
            from afinar.storage import Storage
            Storage(self.settings).locate(uri, "dataSourceConfiguration.s3Configuration")
        elif dsc["type"] == "CUSTOM":
            uri = None
        else:
            raise validation(f"dataSourceConfiguration.type: afinar supports S3 and CUSTOM "
                             f"data sources; got {dsc['type']}")
        try:
            src = self.kbs.add_source(p["knowledgeBaseId"], p["name"], uri,
                                      chunking_config=chunking, config=dsc,
                                      description=p.get("description"),
                                      deletion_policy=p.get("dataDeletionPolicy") or "DELETE")
        except ConfigError as e:
            raise validation(f"vectorIngestionConfiguration.chunkingConfiguration: "
                             f"{e.message}") from None
        return {"dataSource": self._ds_out(src)}

    @api_errors
    def get_ds(self, p: dict) -> dict:
        return {"dataSource": self._ds_out(self.kbs.get_source(p["knowledgeBaseId"],
                                                               p["dataSourceId"]))}

    @api_errors
    def list_ds(self, p: dict) -> dict:
        page, token = _page(self.kbs.list_sources(p["knowledgeBaseId"]), p)
        return {"dataSourceSummaries": [
            {"knowledgeBaseId": s["kb_id"], "dataSourceId": s["id"], "name": s["name"],
             "status": s["status"], "description": s["description"],
             "updatedAt": s["updated_at"]} for s in page], "nextToken": token}

    @api_errors
    def delete_ds(self, p: dict) -> dict:
        s = self.kbs.delete_source(p["knowledgeBaseId"], p["dataSourceId"])
        return {"knowledgeBaseId": s["kb_id"], "dataSourceId": s["id"], "status": "DELETING"}

    # -- ingestion jobs --------------------------------------------------------------------
    @api_errors
    def start_ingestion(self, p: dict) -> dict:
        return {"ingestionJob": self._job_out(self.ingestions.start(
            p["knowledgeBaseId"], p["dataSourceId"], p.get("description")))}

    @api_errors
    def stop_ingestion(self, p: dict) -> dict:
        return {"ingestionJob": self._job_out(self.ingestions.stop(
            p["knowledgeBaseId"], p["dataSourceId"], p["ingestionJobId"]))}

    @api_errors
    def get_ingestion(self, p: dict) -> dict:
        return {"ingestionJob": self._job_out(self.kbs.get_ingestion_job(
            p["knowledgeBaseId"], p["dataSourceId"], p["ingestionJobId"]))}

    @api_errors
    def list_ingestions(self, p: dict) -> dict:
        jobs = self.kbs.list_ingestion_jobs(p["knowledgeBaseId"], p["dataSourceId"])
        for f in p.get("filters") or []:
            if f["attribute"] == "STATUS" and f["operator"] == "EQ":
                jobs = [j for j in jobs if j["status"] in f["values"]]
        sort = p.get("sortBy") or {}
        if sort:
            key = "status" if sort["attribute"] == "STATUS" else "started_at"
            jobs.sort(key=lambda j: j[key], reverse=sort["order"] == "DESCENDING")
        page, token = _page(jobs, p)
        return {"ingestionJobSummaries": [
            {k: v for k, v in self._job_out(j).items() if k != "failureReasons"}
            for j in page], "nextToken": token}

    # -- documents ---------------------------------------------------------------------------
    @staticmethod
    def _metadata(m: dict | None, where: str) -> dict | None:
        if not m:
            return None
        if m["type"] != "IN_LINE_ATTRIBUTE":
            raise validation(f"{where}.type: only IN_LINE_ATTRIBUTE metadata is supported "
                             f"(put S3 metadata in a .metadata.json sidecar and sync)")
        out = {}
        for a in m.get("inlineAttributes") or []:
            v = a["value"]
            field = {"STRING": "stringValue", "NUMBER": "numberValue",
                     "BOOLEAN": "booleanValue", "STRING_LIST": "stringListValue"}[v["type"]]
            if field not in v:
                raise validation(f"{where}.inlineAttributes '{a['key']}': type {v['type']} "
                                 f"needs {field}")
            out[a["key"]] = v[field]
        return out

    def _identifier(self, src: dict, doc_id: str, uri: str) -> dict:
        if src["uri"] is None:
            return {"dataSourceType": "CUSTOM", "custom": {"id": doc_id}}
        return {"dataSourceType": "S3", "s3": {"uri": uri}}

    @api_errors
    def ingest_documents(self, p: dict) -> dict:
        src = self.kbs.get_source(p["knowledgeBaseId"], p["dataSourceId"])
        docs = []
        for i, d in enumerate(p["documents"]):
            where = f"documents[{i}]"
            c = d["content"]
            meta = self._metadata(d.get("metadata"), f"{where}.metadata")
            if c["dataSourceType"] == "CUSTOM":
                if src["uri"] is not None:
                    raise validation(f"{where}.content: CUSTOM documents go to a CUSTOM data "
                                     f"source; this one is S3")
                cu = c.get("custom") or {}
                doc_id = cu["customDocumentIdentifier"]["id"]
                if cu["sourceType"] == "IN_LINE":
                    inline = cu.get("inlineContent") or {}
                    if inline.get("type") != "TEXT" or not inline.get("textContent"):
                        raise validation(f"{where}.content.custom.inlineContent: only TEXT "
                                         f"inline content is supported")
                    docs.append({"id": doc_id, "text": inline["textContent"]["data"],
                                 "metadata": meta})
                else:
                    docs.append({"id": doc_id, "uri": cu["s3Location"]["uri"],
                                 "metadata": meta})
            else:
                if src["uri"] is None or not src["uri"].startswith("s3://"):
                    raise validation(f"{where}.content: S3 documents go to an S3 data source")
                uri = c["s3"]["s3Location"]["uri"]
                prefix = src["uri"].rstrip("/") + "/"
                if not uri.startswith(prefix):
                    raise validation(f"{where}.content.s3.s3Location.uri: '{uri}' is outside "
                                     f"this data source ({prefix})")
                docs.append({"id": uri[len(prefix):], "uri": uri, "metadata": meta})
        results = self.kbs.ingest_documents(src["kb_id"], src["id"], docs)
        return {"documentDetails": [
            {"knowledgeBaseId": src["kb_id"], "dataSourceId": src["id"], "status": r["status"],
             "identifier": self._identifier(src, r["doc_id"], r["uri"]),
             "statusReason": r["reason"]} for r in results]}

    @staticmethod
    def _ident_str(ident: dict) -> str:
        if ident["dataSourceType"] == "CUSTOM":
            return ident["custom"]["id"]
        return ident["s3"]["uri"]

    @api_errors
    def delete_documents(self, p: dict) -> dict:
        src = self.kbs.get_source(p["knowledgeBaseId"], p["dataSourceId"])
        idents = p["documentIdentifiers"]
        res = self.kbs.delete_documents(src["kb_id"], src["id"],
                                        [self._ident_str(i) for i in idents])
        return {"documentDetails": [
            {"knowledgeBaseId": src["kb_id"], "dataSourceId": src["id"], "status": r["status"],
             "identifier": ident} for r, ident in zip(res, idents, strict=True)]}

    def _doc_details(self, src: dict, docs: list[dict]) -> list[dict]:
        return [{"knowledgeBaseId": src["kb_id"], "dataSourceId": src["id"],
                 "status": d["status"], "identifier": self._identifier(src, d["doc_id"],
                                                                       d["uri"]),
                 "statusReason": d["reason"], "updatedAt": d["updated_at"]} for d in docs]

    @api_errors
    def get_documents(self, p: dict) -> dict:
        src = self.kbs.get_source(p["knowledgeBaseId"], p["dataSourceId"])
        docs = self.kbs.documents(src["kb_id"], src["id"])
        by = {d["doc_id"]: d for d in docs} | {d["uri"]: d for d in docs}
        out = []
        for ident in p["documentIdentifiers"]:
            d = by.get(self._ident_str(ident))
            if d is None:
                out.append({"knowledgeBaseId": src["kb_id"], "dataSourceId": src["id"],
                            "status": "NOT_FOUND", "identifier": ident})
            else:
                out += self._doc_details(src, [d])
        return {"documentDetails": out}

    @api_errors
    def list_documents(self, p: dict) -> dict:
        src = self.kbs.get_source(p["knowledgeBaseId"], p["dataSourceId"])
        page, token = _page(self.kbs.documents(src["kb_id"], src["id"]), p)
        return {"documentDetails": self._doc_details(src, page), "nextToken": token}

    # -- runtime -----------------------------------------------------------------------------
    @staticmethod
    def _retrieval_args(cfg: dict | None, where: str) -> dict:
        vs = (cfg or {}).get("vectorSearchConfiguration") or {}
        for unsupported in ("rerankingConfiguration", "implicitFilterConfiguration"):
            if vs.get(unsupported):
                raise validation(f"{where}.vectorSearchConfiguration.{unsupported} is not "
                                 f"supported")
        return {"k": vs.get("numberOfResults") or 5, "search_type": vs.get("overrideSearchType"),
                "filter": vs.get("filter")}

    @api_errors
    def retrieve(self, p: dict) -> dict:
        if p.get("nextToken"):
            raise validation("nextToken: all results come in one page; raise numberOfResults")
        args = self._retrieval_args(p.get("retrievalConfiguration"), "retrievalConfiguration")
        res = self.kbs.retrieve(p["knowledgeBaseId"], p["retrievalQuery"]["text"],
                                args["k"], search_type=args["search_type"],
                                filter=args["filter"])
        return {"retrievalResults": [r.to_bedrock() for r in res]}

    @api_errors
    def retrieve_and_generate(self, p: dict) -> dict:
        from afinar.inference.requests import (
            GenRequest,
        )
        from afinar.rag.answer import answer, citation_to_bedrock

        cfg = p.get("retrieveAndGenerateConfiguration")
        if not cfg or cfg["type"] != "KNOWLEDGE_BASE" or not cfg.get(
                "knowledgeBaseConfiguration"):
            raise validation("retrieveAndGenerateConfiguration: afinar answers from a "
                             "KNOWLEDGE_BASE (with knowledgeBaseConfiguration)")
        kc = cfg["knowledgeBaseConfiguration"]
        args = self._retrieval_args(kc.get("retrievalConfiguration"),
                                    "knowledgeBaseConfiguration.retrievalConfiguration")
        gen = kc.get("generationConfiguration") or {}
        template = (gen.get("promptTemplate") or {}).get("textPromptTemplate")
        ti = (gen.get("inferenceConfig") or {}).get("textInferenceConfig") or {}
        model = self.serving_id(kc["modelArn"])
        session = p.get("sessionId") or str(uuid.uuid4())
        with self.lock:
            history = list(self.sessions.get(session, []))
        engine = self.get_engine()

        def generate(messages):
            try:
                req = engine.submit(GenRequest(
                    model=model, messages=messages,
                    max_tokens=ti.get("maxTokens") or DEFAULT_RAG_MAX_TOKENS,
                    temperature=ti.get("temperature", 0.0), top_p=ti.get("topP", 1.0),
                    stop=ti.get("stopSequences") or []))
            except AfinarError as e:
                raise aws_error(e) from None
            return req.result(timeout=600).text

        res = answer(self.kbs, kc["knowledgeBaseId"], p["input"]["text"], generate,
                     k=args["k"], search_type=args["search_type"], filter=args["filter"],
                     template=template, history=history[-4:])
        with self.lock:
            self.sessions[session] = history + [(p["input"]["text"], res["output"])]
            self.sessions.move_to_end(session)
            while len(self.sessions) > MAX_SESSIONS:
                self.sessions.popitem(last=False)
        return {"output": {"text": res["output"]}, "sessionId": session,
                "citations": [citation_to_bedrock(c) for c in res["citations"]]}


AGENT_HANDLERS = {
    "CreateKnowledgeBase": KnowledgeService.create_kb,
    "GetKnowledgeBase": KnowledgeService.get_kb,
    "ListKnowledgeBases": KnowledgeService.list_kbs,
    "DeleteKnowledgeBase": KnowledgeService.delete_kb,
    "CreateDataSource": KnowledgeService.create_ds,
    "GetDataSource": KnowledgeService.get_ds,
    "ListDataSources": KnowledgeService.list_ds,
    "DeleteDataSource": KnowledgeService.delete_ds,
    "StartIngestionJob": KnowledgeService.start_ingestion,
    "StopIngestionJob": KnowledgeService.stop_ingestion,
    "GetIngestionJob": KnowledgeService.get_ingestion,
    "ListIngestionJobs": KnowledgeService.list_ingestions,
    "IngestKnowledgeBaseDocuments": KnowledgeService.ingest_documents,
    "DeleteKnowledgeBaseDocuments": KnowledgeService.delete_documents,
    "GetKnowledgeBaseDocuments": KnowledgeService.get_documents,
    "ListKnowledgeBaseDocuments": KnowledgeService.list_documents,
    "Retrieve": KnowledgeService.retrieve,
    "RetrieveAndGenerate": KnowledgeService.retrieve_and_generate,
}
