"""The HTTP server: Bedrock's control-plane routes (rest-json, as botocore models them) plus a few
afinar routes (`/afinar/...`: health, job event log).

Routing, request validation and response shapes come from botocore's service model (see
awsproto.py); handlers are plain methods of JobService. No torch in this process: an idle server
stays small and responsive while workers train.
"""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse

from afinar import __version__
from afinar.config import Settings
from afinar.errors import AfinarError
from afinar.jobs.scheduler import Scheduler
from afinar.jobs.service import JobService
from afinar.serve import afinar_api, auth, console, evaluations, eventstream, gate
from afinar.serve import catalog as catalog_routes
from afinar.serve import openai as openai_routes
from afinar.serve import openai_ft as openai_ft_routes
from afinar.serve.awsproto import ApiError, Router, error_body, parse_request, serialize_output
from afinar.serve.awsproto import service_model as load_service_model
from afinar.serve.errors import aws_error
from afinar.serve.knowledge import (
    AGENT_HANDLERS,
    AGENT_OPERATIONS,
    AGENT_RUNTIME_OPERATIONS,
    KnowledgeService,
)
from afinar.serve.threads import inference, inference_iter

log = logging.getLogger("afinar.server")
INFERENCE_AGENT_OPS = {"Retrieve", "RetrieveAndGenerate"}  # embed or generate: inference pool

BEDROCK_OPERATIONS = {
    "CreateModelCustomizationJob": lambda s, p: s.create_job(p),
    "GetModelCustomizationJob": lambda s, p: s.get_job(p["jobIdentifier"]),
    "ListModelCustomizationJobs": lambda s, p: s.list_jobs(p),
    "StopModelCustomizationJob": lambda s, p: s.stop_job(p["jobIdentifier"]),
    "GetCustomModel": lambda s, p: s.get_custom_model(p["modelIdentifier"]),
    "ListCustomModels": lambda s, p: s.list_custom_models(p),
    "DeleteCustomModel": lambda s, p: s.delete_custom_model(p["modelIdentifier"]),
    "ListFoundationModels": lambda s, p: s.list_foundation_models(p),
    "GetFoundationModel": lambda s, p: s.get_foundation_model(p["modelIdentifier"]),
    "CreateModelInvocationJob": lambda s, p: s.invocations.create(p),
    "GetModelInvocationJob": lambda s, p: s.invocations.get(p["jobIdentifier"]),
    "ListModelInvocationJobs": lambda s, p: s.invocations.list(p),
    "StopModelInvocationJob": lambda s, p: s.invocations.stop(p["jobIdentifier"]),
    "CreateEvaluationJob": lambda s, p: s.evaluations.create(p),
    "GetEvaluationJob": lambda s, p: s.evaluations.get(p["jobIdentifier"]),
    "ListEvaluationJobs": lambda s, p: s.evaluations.list(p),
    "StopEvaluationJob": lambda s, p: s.evaluations.stop(p["jobIdentifier"]),
    "PutModelInvocationLoggingConfiguration": lambda s, p: s.invocation_log.put(
        p.get("loggingConfig")) or {},
    "GetModelInvocationLoggingConfiguration": lambda s, p: {
        "loggingConfig": s.invocation_log.get()} if s.invocation_log.get() else {},
    "DeleteModelInvocationLoggingConfiguration": lambda s, p: s.invocation_log.delete() or {},
}


def create_app(settings: Settings, start_scheduler: bool = True) -> FastAPI:
    settings.home.mkdir(parents=True, exist_ok=True)
    service = JobService(settings)
    model = load_service_model("bedrock")
    router = Router(model, list(BEDROCK_OPERATIONS))
    runtime_model = load_service_model("bedrock-runtime")
    runtime_router = Router(runtime_model, [
        "Converse", "ConverseStream", "InvokeModel", "InvokeModelWithResponseStream"])
    agent_model = load_service_model("bedrock-agent")
    agent_rt_model = load_service_model("bedrock-agent-runtime")
    routes = [(router, model, "bedrock"), (runtime_router, runtime_model, "runtime"),
              (Router(agent_model, list(AGENT_OPERATIONS)), agent_model, "agent"),
              (Router(agent_rt_model, list(AGENT_RUNTIME_OPERATIONS)), agent_rt_model, "agent")]

    @asynccontextmanager
    async def lifespan(_app):
        if start_scheduler:
            service.scheduler = Scheduler(settings, service.engine)
            service.scheduler.start()
        yield
        if service.scheduler:
            service.scheduler.shutdown()
        if "engine" in lazy:
            lazy["engine"].close()

    app = FastAPI(title="afinar", version=__version__, lifespan=lifespan,
                  docs_url="/afinar/docs", openapi_url="/afinar/openapi.json", redoc_url=None)
    app.state.service = service
    sessions = gate.Sessions()
    app.add_middleware(gate.Gate, settings=settings, sessions=sessions)

    def err(e: ApiError) -> JSONResponse:
        status, body, headers = error_body(e, model)
        return JSONResponse(body, status_code=status, headers=headers)

    @app.get("/afinar/health")
    async def health():
        """Open to all (a load balancer's probe): says only that the server answers."""
        return {"status": "ok", "version": __version__}

    @app.get("/afinar/status")
    async def status():
        sched = service.scheduler
        return {"running": {j: p.pid for j, p in sched.running.items()} if sched else {},
                "queued": sched.queued() if sched else 0}

    @app.get("/afinar/jobs/{job}/events")
    async def events(job: str, after: int = 0):
        try:
            return await run_in_threadpool(service.job_events, job, after)
        except AfinarError as e:
            return err(aws_error(e))

    # -- inference: engine, runtime and embedder load on first use (the idle server stays
    # free of torch) --------------------------------------------------------------------------
    lazy: dict = {}
    lazy_lock = threading.Lock()

    def get_engine():
        with lazy_lock:
            if "engine" not in lazy and settings.serve_backend == "vllm":
                from afinar.inference.vllm_backend import VLLMEngine
                lazy["engine"] = VLLMEngine(settings, max_queue=settings.serve_max_queue,
                                            confined=True)
            elif "engine" not in lazy:
                from afinar.inference.engine import Engine
                lazy["engine"] = Engine(settings, max_batch=settings.serve_max_batch,
                                        max_queue=settings.serve_max_queue,
                                        memory_budget_mb=settings.serve_memory_mb,
                                        confined=True)
            return lazy["engine"]

    def get_runtime():
        engine = get_engine()
        with lazy_lock:
            if "runtime" not in lazy:
                from afinar.serve.runtime import Runtime
                lazy["runtime"] = Runtime(engine, service.serving_id, get_embedder,
                                          service.invocation_log, service.model_kind)
            return lazy["runtime"]

    def get_embedder():
        # the knowledge bases' cache: /v1/embeddings and retrieval share one MiniLM
        from afinar.inference.embed import DEFAULT_EMBEDDING_MODEL
        return knowledge.kbs.embedder({"embedding_model": DEFAULT_EMBEDDING_MODEL})

    knowledge = KnowledgeService(settings, get_engine, service)
    app.state.knowledge = knowledge
    app.include_router(openai_routes.router(get_engine, service.serving_models, get_embedder,
                                            service.embedding_id, service.invocation_log,
                                            service.model_kind))
    app.include_router(openai_ft_routes.router(service.fine_tuning))
    app.include_router(evaluations.router(service))
    app.include_router(catalog_routes.router(settings, service, knowledge))
    app.include_router(afinar_api.router(settings, service))
    app.include_router(console.router(settings, sessions))

    @app.get("/afinar/engine")
    async def engine_stats():
        e = lazy.get("engine")
        return {"loaded": e.loaded() if e else {}, "stats": e.stats if e else {},
                "queued": len(e.pending) if e else 0}

    async def runtime_call(op, params):
        rt = await inference(get_runtime)
        if op.name == "Converse":
            result = await inference(rt.converse, params)
            status, out = serialize_output(op, result)
            return JSONResponse(out, status_code=status)
        if op.name == "InvokeModel":
            data = await inference(rt.invoke, params)
            return Response(data, media_type="application/json")
        fn = rt.converse_stream if op.name == "ConverseStream" else rt.invoke_stream
        events = await inference(fn, params)  # errors before the stream: plain 4xx
        headers = {"X-Amzn-Bedrock-Content-Type": "application/json"} \
            if op.name == "InvokeModelWithResponseStream" else {}
        return StreamingResponse(inference_iter(events), media_type=eventstream.CONTENT_TYPE,
                                 headers=headers)

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    async def bedrock(request: Request, path: str):
        body = await request.body()
        api_model = model
        try:
            raw = request.scope.get("raw_path", b"").decode("latin-1") or request.url.path
            raw = raw.split("?", 1)[0]
            hit, kind = None, None
            for rtr, rmodel, rkind in routes:
                hit = rtr.match(request.method, raw)
                if hit is not None:
                    api_model, kind = rmodel, rkind
                    break
            if hit is None:
                raise ApiError("UnknownOperationException",
                               f"no operation at {request.method} {raw}", 404)
            op, labels = hit
            params = parse_request(op, labels, request.url.query, request.headers, body)
            if kind == "runtime":
                return await runtime_call(op, params)
            if kind == "agent":
                run = inference if op.name in INFERENCE_AGENT_OPS else run_in_threadpool
                result = await run(AGENT_HANDLERS[op.name], knowledge, params)
            else:
                result = await run_in_threadpool(BEDROCK_OPERATIONS[op.name], service, params)
            status, out = serialize_output(op, result)
            return JSONResponse(out, status_code=status)
        except (ApiError, AfinarError) as e:
            status, b, headers = error_body(e if isinstance(e, ApiError) else aws_error(e),
                                            api_model)
            return JSONResponse(b, status_code=status, headers=headers)
        except (RecursionError, UnicodeError) as e:  # input no handler should have let through
            log.exception("bad input reached a handler")
            status, b, headers = error_body(ApiError(
                "ValidationException", f"the request cannot be processed: "
                f"{type(e).__name__} (too deeply nested, or invalid Unicode)"), api_model)
            return JSONResponse(b, status_code=status, headers=headers)
        except Exception as e:  # never a bare 500 page: botocore still gets a modelled error
            log.exception("internal error")
            return err(ApiError("InternalServerException",
                                f"internal error: {type(e).__name__}: {e}"))

    @app.exception_handler(404)
    async def not_found(_request, _exc):
        return Response(status_code=404)

    return app


def serve(settings: Settings, log_level: str = "info", announce=None) -> None:
    """Run the server; `announce(line)` is called once the app (and its job store) is ready."""
    import uvicorn

    if auth.auth_required(settings) and not (settings.access_keys or settings.api_keys):
        from afinar.errors import ConfigError
        raise ConfigError(f"binding {settings.host} (require_auth or not loopback) needs "
                          f"authentication, but "
                          f"no access_keys or api_keys are configured",
                          hint="add [access_keys] (access key id = secret) or api_keys to "
                               "afinar.toml, or bind 127.0.0.1")
    app = create_app(settings)
    if announce:
        announce(f"afinar server on http://{settings.host}:{settings.port} (home {settings.home}, "
                 f"job store {settings.db_url.split('://')[0]}, {settings.max_concurrent_jobs} "
                 f"job(s) at a time, {settings.serve_backend} inference)")
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level,
                access_log=False)
