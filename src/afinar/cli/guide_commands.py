"""`afinar advise` (which customization to use) and `afinar catalog` (ready-made recipes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from afinar.cli.render import out
from afinar.errors import ConfigError


def add_advise(sub) -> None:
    p = sub.add_parser("advise", help="which customization fits: RAG, fine-tuning, continued "
                                      "pre-training, or a combination",
                       description="Answers four questions (interactively, by flags or as "
                       "JSON) or looks at your data (--data), and recommends RAG, fine-tuning, "
                       "continued pre-training or a combination, with the reasons, a comparison "
                       "(cost, time, data, infrastructure, updates, transparency) and the "
                       "commands that start it.")
    p.add_argument("--changing", choices=["yes", "no"],
                   help="does the information change constantly?")
    p.add_argument("--labelled", choices=["none", "thousands", "millions"],
                   help="how much labelled data there is")
    p.add_argument("--budget", choices=["low", "medium", "high"])
    p.add_argument("--specialization", choices=["information", "task", "domain"],
                   help="access to information, a task, or a whole domain")
    p.add_argument("--answers", help="the answers as JSON (or a .json file)")
    p.add_argument("--data", help="a data file or folder of documents to look at instead")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_advise)


def cmd_advise(args) -> int:
    from afinar.advisor import advise, inspect_data, load_rules, norm, to_json

    m = load_rules()
    answers: dict = {}
    findings, cmds = [], []
    if args.data:
        answers, findings, cmds = inspect_data(Path(args.data))
    if args.answers:
        text = Path(args.answers).read_text() if Path(args.answers).is_file() else args.answers
        try:
            answers |= json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--answers: not valid JSON ({e.msg})") from None
    for k in m["questions"]:
        if getattr(args, k, None):
            answers[k] = getattr(args, k)
    missing = [k for k in m["questions"] if k not in answers]
    if missing and args.data:  # the data cannot say these: sensible defaults, said aloud
        defaults = {"changing": "no", "budget": "medium"}
        for k in missing:
            if k in defaults:
                answers[k] = defaults[k]
                findings.append(f"assumed {k}={defaults[k]} (pass --{k} to change it)")
        missing = [k for k in m["questions"] if k not in answers]
    if missing and sys.stdin.isatty() and not args.json:
        for k in missing:
            q = m["questions"][k]
            choices = [norm(c) for c in q["choices"]]
            while True:
                v = input(f"{q['prompt']} [{'/'.join(choices)}]: ").strip().lower()
                if v in choices:
                    answers[k] = v
                    break
                print(f"  please answer one of: {', '.join(choices)}")
    a = advise(answers, findings, cmds)
    out(to_json(a) if args.json else a.render())
    return 0


def add_catalog(sub) -> None:
    p = sub.add_parser("catalog", help="ready-made recipes: list, show, run",
                       description="JumpStart-style recipes shipped with afinar: a base model, "
                       "a customization type, hyperparameters, sample data and an evaluation. "
                       "`run` does the whole job on the sample data or yours (--data).")
    cs = p.add_subparsers(dest="catalog_command", metavar="CATALOG_COMMAND", required=True)
    ls = cs.add_parser("list", help="the recipes")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_catalog_list)
    sh = cs.add_parser("show", help="one recipe in full (its YAML)")
    sh.add_argument("name")
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(func=cmd_catalog_show)
    r = cs.add_parser("run", help="run a recipe end to end: data, customization, evaluation")
    r.add_argument("name")
    r.add_argument("--data", help="your training data (a folder of documents for rag) instead "
                                  "of the sample")
    r.add_argument("--eval-data", help="your held-out data for the evaluation")
    r.add_argument("--questions", help="rag: questions JSONL for the retrieval evaluation")
    r.add_argument("--base-model", help="override the recipe's base model")
    r.add_argument("--name", help="name of the custom model / knowledge base")
    r.add_argument("--output-dir", help="default $AFINAR_HOME/demo/catalog-<name>-<time>")
    r.add_argument("--endpoint", help="run it as a job on this afinar server instead (e.g. "
                                      "http://127.0.0.1:8080)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_catalog_run)


def cmd_catalog_list(args) -> int:
    from afinar.catalog import load_catalog

    rows = [r.summary() for r in load_catalog().values()]
    if args.json:
        out(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        out(f"{r['name']:<18} {r['type']:<9} {r['base_model']:<24} {r['title']}")
    out("\nafinar catalog show NAME for details; afinar catalog run NAME to run one")
    return 0


def cmd_catalog_show(args) -> int:
    from afinar.catalog import RECIPES_DIR, get_recipe

    r = get_recipe(args.name)
    if args.json:
        out(r.model_dump_json(indent=2))
    else:
        out((RECIPES_DIR / f"{r.name}.yaml").read_text().rstrip())
    return 0


def cmd_catalog_run(args) -> int:
    from afinar.catalog import get_recipe, run_recipe
    from afinar.config import load_settings
    from afinar.progress import TqdmProgress

    r = get_recipe(args.name)
    if args.endpoint:
        import urllib.request
        body = {k: v for k, v in {"customModelName": args.name,
                                  "baseModelIdentifier": args.base_model}.items() if v}
        req = urllib.request.Request(f"{args.endpoint.rstrip('/')}/afinar/catalog/{r.name}/run",
                                     data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            out(resp.read().decode())
        return 0
    prog = TqdmProgress(disable=args.quiet)
    try:
        rep = run_recipe(r, load_settings({"home": args.home}), data=args.data,
                         eval_data=args.eval_data, questions=args.questions,
                         base_model=args.base_model, output_dir=args.output_dir,
                         name=args.name, progress=prog, say=out if not args.json else
                         (lambda s: None))
    finally:
        prog.close()
    if args.json:
        out(json.dumps(rep, indent=2, default=str))
        return 0
    ev = rep.get("evaluation")
    if rep["type"] == "rag" and ev:
        for t, m in ev.items():
            out(f"  {t}: hit@1 {m['hit_rate_at_1']:.2f}, hit@{m['k']} {m['hit_rate_at_k']:.2f}, "
                f"MRR {m['mrr']:.2f}")
    elif rep["type"] == "cpt" and ev:
        out(f"  held-out perplexity {ev['initial'].get('perplexity', float('nan')):.2f} -> "
            f"{ev['final'].get('perplexity', float('nan')):.2f}")
    elif ev:
        from afinar.eval.compare import format_table
        out(format_table(ev))
    out(f"done in {rep['seconds']} s; report: {rep['output_dir']}/report")
    return 0


REGISTRY = [add_advise, add_catalog]
