"""Retrieve-and-generate: the retrieved chunks go into a prompt template, the chosen model (any
base or custom model the engine serves) answers, and citations map spans of the answer to the
chunks that support them.

The template may use `$search_results$` (numbered chunks with their sources), `$query$` and
`$output_format_instructions$`, as Bedrock's do. Without `$query$` the template is the system
message and the question the user message.

Citations: the answer is split into sentences; each sentence is attributed to the retrieved
chunks it is closest to, by embedding similarity plus the share of its words found in the chunk
(numbers and names matter more than paraphrase for a grounded answer). Consecutive sentences
citing the same chunks form one citation; spans are [start, end) character offsets into the
answer. A sentence no chunk supports is left uncited.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from afinar.rag.kb import Retrieved

DEFAULT_PROMPT = (
    "You are a question answering agent. Answer the user's question using only the "
    "information in the search results below, in one or two sentences. If the search results "
    "do not contain the answer, say that you could not find it.\n\n"
    "Search results:\n$search_results$\n$output_format_instructions$")
CITE_MIN = 0.45  # combined score below which a sentence is left uncited
CITE_MARGIN = 0.05  # chunks within this of the best are cited together
_SENT = re.compile(r"[^.!?\n]+(?:[.!?]+(?=\s|$)|\n|$)")
_WORD = re.compile(r"[A-Za-z0-9À-ÿ_$%-]+")


def format_results(results: list[Retrieved]) -> str:
    return "\n".join(f"[{i}] (source: {r.doc_id}) {r.text.strip()}"
                     for i, r in enumerate(results, 1))


def build_messages(query: str, results: list[Retrieved], template: str | None = None,
                   history: list[tuple[str, str]] | None = None) -> list[dict]:
    template = template or DEFAULT_PROMPT
    filled = (template.replace("$search_results$", format_results(results))
              .replace("$output_format_instructions$", "").rstrip() + "\n")
    msgs: list[dict] = []
    if "$query$" in template:
        for q, a in history or []:
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        msgs.append({"role": "user", "content": filled.replace("$query$", query)})
        return msgs
    msgs.append({"role": "system", "content": filled})
    for q, a in history or []:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    msgs.append({"role": "user", "content": query})
    return msgs


def _words(s: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(s) if len(w) > 2 or w.isdigit()}


def cite(answer: str, results: list[Retrieved], encode: Callable[[list[str]], np.ndarray]
         ) -> list[dict]:
    """Citations in Bedrock's shape: [{generatedResponsePart: {textResponsePart: {text,
    span: {start, end}}}, retrievedReferences: [Retrieved, ...]}]."""
    spans = [(m.start() + len(m.group()) - len(m.group().lstrip()), m.end())
             for m in _SENT.finditer(answer) if m.group().strip()]
    spans = [(a, b - (len(answer[a:b]) - len(answer[a:b].rstrip()))) for a, b in spans]
    if not spans or not results:
        return []
    sv = encode([answer[a:b] for a, b in spans])
    cv = encode([r.text for r in results])
    sim = sv @ cv.T  # normalised vectors: cosine
    chunk_words = [_words(r.text) for r in results]
    parts: list[tuple[int, int, tuple[int, ...]]] = []
    for i, (a, b) in enumerate(spans):
        w = _words(answer[a:b])
        overlap = np.array([len(w & cw) / len(w) if w else 0.0 for cw in chunk_words])
        score = sim[i] + 0.5 * overlap
        best = float(score.max())
        if best < CITE_MIN:
            continue
        refs = tuple(j for j in np.argsort(-score) if score[j] >= best - CITE_MARGIN)
        if parts and parts[-1][2] == refs and parts[-1][1] <= a:
            parts[-1] = (parts[-1][0], b, refs)
        else:
            parts.append((a, b, refs))
    return [{"generatedResponsePart": {"textResponsePart": {
                "text": answer[a:b], "span": {"start": a, "end": b}}},
             "retrievedReferences": [results[j] for j in refs]} for a, b, refs in parts]


def citation_to_bedrock(c: dict) -> dict:
    return {"generatedResponsePart": c["generatedResponsePart"],
            "retrievedReferences": [{"content": {"type": "TEXT", "text": r.text},
                                     "location": r.location(), "metadata": r.metadata}
                                    for r in c["retrievedReferences"]]}


def answer(kbs, kb: str, question: str, generate: Callable[[list[dict]], str], *,
           k: int = 5, search_type: str | None = None, filter: dict | None = None,
           template: str | None = None, history: list[tuple[str, str]] | None = None) -> dict:
    """{"output", "citations", "results"}; `generate(messages) -> text`."""
    results = kbs.retrieve(kb, question, k, search_type=search_type, filter=filter)
    if not results:
        text = "Sorry, I could not find any relevant information in the knowledge base."
        return {"output": text, "citations": [], "results": []}
    text = generate(build_messages(question, results, template, history)).strip()
    emb = kbs.embedder(kbs.get(kb))
    return {"output": text, "citations": cite(text, results, emb.encode), "results": results}
