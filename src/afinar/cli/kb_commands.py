"""`afinar kb ...`: knowledge bases on this machine (the same records and stores the server
uses): create, sync, list, show, query, ask, ingest, delete, eval."""

from __future__ import annotations

import json
from pathlib import Path

from afinar.cli.args import int_in
from afinar.cli.render import dump_json, out
from afinar.config import load_settings
from afinar.errors import ConfigError
from afinar.progress import TqdmProgress

STRATEGIES = ("FIXED_SIZE", "HIERARCHICAL", "SEMANTIC", "NONE")


def _kbs(args):
    from afinar.rag.kb import KnowledgeBases
    return KnowledgeBases(load_settings({"home": args.home}))


def _json_arg(value: str | None, what: str):
    if value is None:
        return None
    text = Path(value).read_text() if not value.lstrip().startswith(("{", "[")) and Path(
        value).is_file() else value
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what}: not valid JSON ({e.msg} at column {e.colno})",
                          hint="give inline JSON or the path of a .json file") from None


def chunking_from_args(args) -> dict | None:
    """--chunking-config (Bedrock JSON) or the shorthand flags."""
    if args.chunking_config:
        return _json_arg(args.chunking_config, "--chunking-config")
    s = args.strategy.upper().replace("-", "_")
    if s in ("FIXED", "FIXEDSIZE"):
        s = "FIXED_SIZE"
    if s not in STRATEGIES:
        raise ConfigError(f"--strategy must be one of {', '.join(STRATEGIES)}; got "
                          f"{args.strategy!r}")
    if s == "FIXED_SIZE":
        return {"chunkingStrategy": s, "fixedSizeChunkingConfiguration": {
            "maxTokens": args.max_tokens, "overlapPercentage": args.overlap_percentage}}
    if s == "HIERARCHICAL":
        return {"chunkingStrategy": s, "hierarchicalChunkingConfiguration": {
            "levelConfigurations": [{"maxTokens": args.parent_tokens},
                                    {"maxTokens": args.child_tokens}],
            "overlapTokens": args.overlap_tokens}}
    if s == "SEMANTIC":
        return {"chunkingStrategy": s, "semanticChunkingConfiguration": {
            "maxTokens": args.max_tokens, "bufferSize": args.buffer_size,
            "breakpointPercentileThreshold": args.breakpoint_percentile}}
    return {"chunkingStrategy": "NONE"}


def add_kb(sub) -> None:
    p = sub.add_parser("kb", help="knowledge bases (RAG): create, sync, query, ask",
                       description="Knowledge bases: documents chunked, embedded and indexed "
                       "for retrieval, and answers with citations. The server exposes the "
                       "same knowledge bases through Bedrock's bedrock-agent and "
                       "bedrock-agent-runtime APIs.")
    ks = p.add_subparsers(dest="kb_command", metavar="KB_COMMAND", required=True)

    c = ks.add_parser("create", help="create a knowledge base (optionally with a data source)")
    c.add_argument("name")
    c.add_argument("--source", help="a folder of documents or an s3:// prefix to sync from")
    c.add_argument("--source-name", default="default", help="name of that data source")
    c.add_argument("--embedding-model", default=None,
                   help="sentence-transformers model: registry id, hub id or path "
                        "(default all-minilm-l6-v2)")
    c.add_argument("--description")
    c.add_argument("--sync", action="store_true", help="sync the data source right away")
    _chunking_flags(c)
    c.set_defaults(func=cmd_create)

    a = ks.add_parser("add-source", help="add a data source to a knowledge base")
    a.add_argument("kb")
    a.add_argument("source", help="a folder of documents or an s3:// prefix; 'custom' for "
                                  "documents ingested one by one")
    a.add_argument("--name", default=None, help="data source name (default: the folder name)")
    _chunking_flags(a)
    a.set_defaults(func=cmd_add_source)

    s = ks.add_parser("sync", help="index new and changed documents, drop deleted ones")
    s.add_argument("kb")
    s.add_argument("--source", help="data source name or id (needed when there are several)")
    s.add_argument("--json", action="store_true", help="print the ingestion job as JSON")
    s.set_defaults(func=cmd_sync)

    ls = ks.add_parser("list", help="list knowledge bases")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)

    sh = ks.add_parser("show", help="a knowledge base: sources, documents, ingestion jobs")
    sh.add_argument("kb")
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(func=cmd_show)

    q = ks.add_parser("query", help="retrieve the chunks closest to a query")
    q.add_argument("kb")
    q.add_argument("text")
    _retrieval_flags(q)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_query)

    k = ks.add_parser("ask", help="answer a question from the knowledge base, with citations")
    k.add_argument("kb")
    k.add_argument("question")
    k.add_argument("--model", default=None, help="generating model: registry id, custom "
                   "model, path (default: the configured default model)")
    k.add_argument("--max-tokens", type=int_in(1, 32768), default=128)
    k.add_argument("--prompt-template", help="template with $search_results$ (and optionally "
                                             "$query$)")
    _retrieval_flags(k)
    k.add_argument("--json", action="store_true")
    k.set_defaults(func=cmd_ask)

    i = ks.add_parser("ingest", help="add or replace single documents (by id) in a source")
    i.add_argument("kb")
    i.add_argument("files", nargs="*", help="files to ingest (their path is the id)")
    i.add_argument("--source", help="data source name or id")
    i.add_argument("--id", help="document id for --text")
    i.add_argument("--text", help="inline document text")
    i.add_argument("--metadata", help="metadata attributes as JSON, for all given documents")
    i.set_defaults(func=cmd_ingest)

    rd = ks.add_parser("remove", help="delete single documents (by id) from a source")
    rd.add_argument("kb")
    rd.add_argument("ids", nargs="+")
    rd.add_argument("--source", help="data source name or id")
    rd.set_defaults(func=cmd_remove)

    d = ks.add_parser("delete", help="delete a knowledge base and its index")
    d.add_argument("kb")
    d.set_defaults(func=cmd_delete)

    e = ks.add_parser("eval", help="retrieval quality: hit rate@k and MRR on a question set")
    e.add_argument("kb")
    e.add_argument("--questions", required=True,
                   help='JSONL: {"question": ..., "expected_source": <document id, file name '
                        'or URI>} per line')
    e.add_argument("-k", type=int_in(1, 100), default=5)
    e.add_argument("--search-type", choices=["HYBRID", "SEMANTIC", "both"], default="both")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eval)


def _chunking_flags(p) -> None:
    # chunking numbers: plain ints here, checked with Bedrock's field names by rag/chunking.py
    g = p.add_argument_group("chunking (Bedrock's strategies; default FIXED_SIZE 300 tokens, "
                             "20% overlap)")
    g.add_argument("--strategy", default="FIXED_SIZE",
                   help="FIXED_SIZE, HIERARCHICAL, SEMANTIC or NONE")
    g.add_argument("--max-tokens", type=int, default=300, help="FIXED_SIZE, SEMANTIC: 1-8192")
    g.add_argument("--overlap-percentage", type=int, default=20, help="FIXED_SIZE: 1-99")
    g.add_argument("--parent-tokens", type=int, default=1500, help="HIERARCHICAL parent size")
    g.add_argument("--child-tokens", type=int, default=300, help="HIERARCHICAL child size")
    g.add_argument("--overlap-tokens", type=int, default=60, help="HIERARCHICAL overlap")
    g.add_argument("--buffer-size", type=int, default=0, help="SEMANTIC: 0-1")
    g.add_argument("--breakpoint-percentile", type=int, default=95, help="SEMANTIC: 50-99")
    g.add_argument("--chunking-config", help="a Bedrock chunkingConfiguration as JSON (or a "
                                             "file); overrides the flags above")


def _retrieval_flags(p) -> None:
    p.add_argument("-k", "--number-of-results", dest="k", type=int_in(1, 100), default=5)
    p.add_argument("--search-type", choices=["HYBRID", "SEMANTIC"], default=None,
                   help="HYBRID (BM25 + vectors, the default) or SEMANTIC (vectors only)")
    p.add_argument("--filter", help="a Bedrock metadata filter as JSON, e.g. "
                                    '\'{"equals": {"key": "team", "value": "support"}}\'')


def _print_job(job: dict) -> None:
    st = job["statistics"]
    out(f"ingestion job {job['id']}: {job['status']}  scanned {st['numberOfDocumentsScanned']}, "
        f"new {st['numberOfNewDocumentsIndexed']}, modified "
        f"{st['numberOfModifiedDocumentsIndexed']}, metadata-only "
        f"{st['numberOfMetadataDocumentsModified']}, deleted {st['numberOfDocumentsDeleted']}, "
        f"failed {st['numberOfDocumentsFailed']}, skipped {st['numberOfDocumentsSkipped']}")
    for r in job["failure_reasons"]:
        out(f"  failed: {r}")


def _sync(kbs, kb: str, source: str | None, quiet: bool) -> dict:
    prog = TqdmProgress(disable=quiet)
    try:
        job = kbs.sync(kb, source, progress=prog)
    finally:
        prog.close()
    return job


def cmd_create(args) -> int:
    kbs = _kbs(args)
    chunking = chunking_from_args(args)
    from afinar.rag.kb import source_uri, validate_chunking
    validate_chunking(chunking)  # before anything is created
    source_uri(args.source)
    kb = kbs.create(args.name, args.embedding_model, description=args.description)
    out(f"knowledge base {kb['name']} ({kb['id']}), embeddings: {kb['embedding_model']}")
    if args.source:
        src = kbs.add_source(kb["id"], args.source_name, args.source, chunking_config=chunking)
        out(f"data source {src['name']} ({src['id']}): {src['uri']}")
        if args.sync:
            _print_job(_sync(kbs, kb["id"], src["id"], args.quiet))
        else:
            out(f"next: afinar kb sync {kb['name']}")
    return 0


def cmd_add_source(args) -> int:
    kbs = _kbs(args)
    uri = None if args.source == "custom" else args.source
    name = args.name or ("custom" if uri is None else Path(uri.rstrip("/")).name or "source")
    src = kbs.add_source(args.kb, name, uri, chunking_config=chunking_from_args(args))
    where = src["uri"] or "CUSTOM (ingest documents one by one)"
    out(f"data source {src['name']} ({src['id']}): {where}")
    return 0


def cmd_sync(args) -> int:
    job = _sync(_kbs(args), args.kb, args.source, args.quiet)
    stats = job.pop("_stats")
    if args.json:
        dump_json(job)
    else:
        _print_job(job)
        out(f"  {stats.chunks} chunks written")
    return 0


def cmd_list(args) -> int:
    kbs = _kbs(args)
    rows = []
    for kb in kbs.list():
        c = kbs.counts(kb["id"])
        rows.append({"id": kb["id"], "name": kb["name"], "embedding_model": kb["embedding_model"],
                     "documents": c.get("INDEXED", {}).get("documents", 0),
                     "chunks": c.get("INDEXED", {}).get("chunks", 0),
                     "failed": c.get("FAILED", {}).get("documents", 0),
                     "updated": kb["updated_at"].isoformat(timespec="seconds")})
    if args.json:
        dump_json(rows)
        return 0
    if not rows:
        out("no knowledge bases; create one with `afinar kb create NAME --source FOLDER`")
    for r in rows:
        out(f"{r['id']}  {r['name']:<24} {r['documents']:>5} docs {r['chunks']:>7} chunks "
            f"{r['failed']:>3} failed  {r['embedding_model']}  updated {r['updated']}")
    return 0


def cmd_show(args) -> int:
    kbs = _kbs(args)
    kb = kbs.get(args.kb)
    sources = kbs.list_sources(kb["id"])
    info = {"knowledge_base": kb, "sources": [
        s | {"ingestion_jobs": kbs.list_ingestion_jobs(kb["id"], s["id"])[-5:],
             "documents": kbs.documents(kb["id"], s["id"])} for s in sources]}
    if args.json:
        dump_json(info)
        return 0
    out(f"{kb['name']} ({kb['id']})  embeddings {kb['embedding_model']}  {kb['arn']}")
    for s in info["sources"]:
        chunking = s["config"]["vectorIngestionConfiguration"]["chunkingConfiguration"]
        out(f"  source {s['name']} ({s['id']}): {s['uri'] or 'CUSTOM'}  "
            f"chunking {chunking['chunkingStrategy']}")
        for d in s["documents"]:
            extra = f"  {d['reason']}" if d["reason"] else ""
            out(f"    {d['status']:<8} {d['chunks']:>4} chunks  {d['doc_id']}{extra}")
        if s["ingestion_jobs"]:
            _print_job(s["ingestion_jobs"][-1])
    return 0


def _results_table(results) -> None:
    for i, r in enumerate(results, 1):
        text = " ".join(r.text.split())
        out(f"[{i}] {r.score:.4f}  {r.doc_id}  (chars {r.start}-{r.end})")
        out(f"    {text[:300]}{'...' if len(text) > 300 else ''}")


def cmd_query(args) -> int:
    kbs = _kbs(args)
    res = kbs.retrieve(args.kb, args.text, args.k, search_type=args.search_type,
                       filter=_json_arg(args.filter, "--filter"))
    if args.json:
        dump_json([r.to_bedrock() for r in res])
    elif not res:
        out("no results")
    else:
        _results_table(res)
    return 0


def cmd_ask(args) -> int:
    from afinar.inference.engine import Engine
    from afinar.inference.requests import GenRequest
    from afinar.rag.answer import answer, citation_to_bedrock

    kbs = _kbs(args)
    flt = _json_arg(args.filter, "--filter")
    kbs.get(args.kb)
    model = args.model or kbs.settings.default_model
    engine = Engine(kbs.settings, max_batch=1)
    try:
        def generate(messages):
            return engine.submit(GenRequest(model=model, messages=messages,
                                            max_tokens=args.max_tokens)).result().text
        res = answer(kbs, args.kb, args.question, generate, k=args.k,
                     search_type=args.search_type, filter=flt, template=args.prompt_template)
    finally:
        engine.close()
    if args.json:
        dump_json({"output": {"text": res["output"]},
                   "citations": [citation_to_bedrock(c) for c in res["citations"]]})
        return 0
    out(res["output"])
    out("")
    for c in res["citations"]:
        part = c["generatedResponsePart"]["textResponsePart"]
        srcs = ", ".join(dict.fromkeys(r.doc_id for r in c["retrievedReferences"]))
        out(f"  \"{part['text']}\" [{part['span']['start']}:{part['span']['end']}] <- {srcs}")
    if not res["citations"] and res["results"]:
        out("  (no sentence of the answer matched a retrieved chunk closely enough to cite)")
    return 0


def cmd_ingest(args) -> int:
    kbs = _kbs(args)
    src = kbs.resolve_source(args.kb, args.source)["id"]
    meta = _json_arg(args.metadata, "--metadata")
    docs = [{"id": str(Path(f)), "uri": str(Path(f).resolve()), "metadata": meta}
            for f in args.files]
    if args.text is not None:
        docs.append({"id": args.id, "text": args.text, "metadata": meta})
    if not docs:
        raise ConfigError("nothing to ingest: give files or --id with --text")
    bad = [f for f in args.files if not Path(f).is_file()]
    if bad:
        raise ConfigError(f"not a file: {', '.join(bad)}")
    # files named on the command line are the user's own: allow their folders
    s = kbs.settings
    s.allowed_roots = list(s.allowed_roots) + [Path(f).resolve().parent for f in args.files]
    for d in kbs.ingest_documents(args.kb, src, docs):
        out(f"{d['status']:<8} {d['doc_id']}" + (f"  {d['reason']}" if d["reason"] else ""))
    return 0


def cmd_remove(args) -> int:
    kbs = _kbs(args)
    src = kbs.resolve_source(args.kb, args.source)["id"]
    for d in kbs.delete_documents(args.kb, src, args.ids):
        out(f"{'deleted' if d['status'] == 'DELETING' else 'not found'}  {d['doc_id']}")
    return 0


def cmd_delete(args) -> int:
    kb = _kbs(args).delete(args.kb)
    out(f"deleted knowledge base {kb['name']} ({kb['id']}) and its index")
    return 0


def cmd_eval(args) -> int:
    from afinar.rag.evaluate import evaluate, read_questions

    kbs = _kbs(args)
    questions = read_questions(Path(args.questions))
    types = ["HYBRID", "SEMANTIC"] if args.search_type == "both" else [args.search_type]
    report = {t: evaluate(kbs, args.kb, questions, args.k, t) for t in types}
    if args.json:
        dump_json(report)
        return 0
    out(f"{len(questions)} questions, k={args.k}")
    out(f"{'search':<10} {'hit@1':>7} {'hit@k':>7} {'MRR':>7}")
    for t, r in report.items():
        out(f"{t:<10} {r['hit_rate_at_1']:>7.3f} {r['hit_rate_at_k']:>7.3f} {r['mrr']:>7.3f}")
    misses = [q for q in report[types[0]]["questions"] if q["rank"] is None]
    for q in misses[:10]:
        out(f"  miss ({types[0]}): {q['question']!r} expected {q['expected_source']}")
    return 0


REGISTRY = [add_kb]
