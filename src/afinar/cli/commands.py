"""Sub-commands. Each `add_*` registers its parser; each `cmd_*` calls the library and renders."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

from afinar.cli.args import add_model_flags, collect, float_in, int_in, int_or_auto
from afinar.cli.render import dump_json, err, out
from afinar.config import Settings, load_settings
from afinar.errors import AfinarError, ConfigError
from afinar.progress import TqdmProgress


def _settings(args) -> Settings:
    return load_settings({"home": args.home})


def _quiet_libraries() -> None:
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        from transformers.utils import logging as tlog
        tlog.disable_progress_bar()
        tlog.set_verbosity_error()
    except ImportError:
        pass


# -- data ---------------------------------------------------------------------------------------
def add_data(sub) -> None:
    p = sub.add_parser("data", help="check, clean, split and synthesize data files")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    c = dsub.add_parser("check", help="report problems and statistics before any compute")
    c.add_argument("file")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.add_argument("--max-length", type=int_or_auto(8, 32768), default="auto",
                   help="the token limit to check against (default auto: what training would "
                        "choose from these lengths for the model)")
    c.add_argument("--model", help="tokenizer to count tokens with (default: default model)")
    c.add_argument("--no-tokens", action="store_true", help="skip token counting")
    c.set_defaults(func=cmd_data_check)
    s = dsub.add_parser("split", help="deterministic train/validation/test split")
    s.add_argument("file")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--ratios", type=float_in(0, 1), nargs=3, default=[0.8, 0.1, 0.1],
                   metavar=("TRAIN", "VAL", "TEST"))
    s.add_argument("--seed", type=int_in(0), default=42)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_data_split)
    c = dsub.add_parser("clean", help="remove duplicates and near duplicates, filter by "
                        "length, balance classes; writes the cleaned file and a summary")
    c.add_argument("file")
    c.add_argument("--out", required=True, help="cleaned JSONL file to write")
    c.add_argument("--keep-duplicates", action="store_true", help="keep exact duplicates")
    c.add_argument("--near-dup-threshold", type=float_in(0, 1), default=0.9,
                   help="character 5-gram Jaccard at or above which a record is a near "
                        "duplicate of an earlier one (default 0.9)")
    c.add_argument("--keep-near-duplicates", action="store_true")
    c.add_argument("--min-chars", type=int_in(0), help="drop records shorter than this")
    c.add_argument("--max-chars", type=int_in(1), help="drop records longer than this")
    c.add_argument("--balance", choices=["down", "up"],
                   help="balance classes: downsample to the rarest or upsample to the commonest")
    c.add_argument("--seed", type=int_in(0), default=42)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_data_clean)
    y = dsub.add_parser("synthesize", help="a teacher model writes N new examples like a few "
                        "seed examples (same schema), deduplicated and checked")
    y.add_argument("seeds", help="seed examples (JSONL/JSON/CSV/Parquet; 5-20 varied ones)")
    y.add_argument("--teacher", required=True, help="the model that writes them: a registry "
                   "id, custom model, local folder, hub id, or an endpoint in afinar.toml "
                   "[teachers]")
    y.add_argument("--n", type=int_in(1, 1_000_000), required=True,
                   help="how many new examples to write")
    y.add_argument("--out", required=True, help="JSONL file to write (an existing one is "
                   "continued)")
    y.add_argument("--per-call", type=int_in(1, 50), default=5,
                   help="examples asked for per teacher call (default 5)")
    y.add_argument("--shots", type=int_in(1, 50), default=3,
                   help="seed examples shown per call, drawn at random (default 3)")
    y.add_argument("--instructions", help="what to vary or keep, in words (added to each call)")
    y.add_argument("--temperature", type=float_in(0, 2), default=0.9)
    y.add_argument("--max-new-tokens", type=int_in(16, 32768), default=2048,
                   help="the longest teacher answer (default 2048)")
    y.add_argument("--seed", type=int_in(0), default=42)
    y.add_argument("--json", action="store_true")
    y.set_defaults(func=cmd_data_synthesize)


def cmd_data_check(args) -> int:
    from afinar.data.check import check_file, format_report

    _quiet_libraries()
    settings = _settings(args)
    tok, note, context, budget = None, None, None, None
    if not args.no_tokens:
        try:
            from afinar.models.loading import load_tokenizer
            from afinar.models.registry import resolve_model
            res = resolve_model(args.model or settings.default_model, settings,
                                TqdmProgress(disable=args.quiet or args.json))
            tok = load_tokenizer(res.base if res.kind == "adapter" else res.path)
            from afinar.data.length import model_limits
            context, budget = model_limits(res.base if res.kind == "adapter" else res.path)
        except AfinarError as e:
            note = f"token counts skipped: {e.message}"
    rep = check_file(args.file, tokenizer=tok, max_length=args.max_length,
                     context=context if tok else None, budget=budget if tok else None)
    if note:
        rep.warnings.append(note)
    if args.json:
        dump_json(rep.to_dict())
    else:
        out(format_report(rep))
    return 0 if rep.ok else 1


def cmd_data_clean(args) -> int:
    from afinar.data.clean import clean_file, format_summary

    if not 0 < args.near_dup_threshold <= 1:
        raise ConfigError(f"--near-dup-threshold must be in (0, 1]; got {args.near_dup_threshold}")
    s = clean_file(args.file, args.out, dedup=not args.keep_duplicates,
                   near_dup_threshold=None if args.keep_near_duplicates
                   else args.near_dup_threshold, min_chars=args.min_chars,
                   max_chars=args.max_chars, balance=args.balance, seed=args.seed)
    if args.json:
        dump_json(s.to_dict())
    else:
        out(format_summary(s))
    return 0


def cmd_data_synthesize(args) -> int:
    from afinar.inference.teachers import make_teacher
    from afinar.training.synthesize import synthesize

    _quiet_libraries()
    settings = _settings(args)
    bar = TqdmProgress(disable=args.quiet or args.json)
    try:
        res = synthesize(args.seeds, Path(args.out), args.n, lambda schema: make_teacher(
            args.teacher, settings, args.max_new_tokens, temperature=args.temperature,
            json_schema=schema, seed=args.seed), bar, lambda: False, per_call=args.per_call,
            shots=args.shots, instructions=args.instructions, seed=args.seed)
    finally:
        bar.close()
    if args.json:
        dump_json(res.to_dict())
    else:
        out(f"{res.kept} of {res.wanted} examples in {res.path} ({res.calls} teacher calls, "
            f"{res.proposed} proposed, {res.seconds:.0f} s)")
        if res.left_out:
            out("  left out: " + ", ".join(f"{n} {w}" for w, n in res.left_out.items()))
        if res.kept < res.wanted:
            err(f"warning: {res.wanted - res.kept} short: the teacher repeated itself or "
                f"wrote invalid records; try more varied seeds, --instructions, or a higher "
                f"--temperature")
    return 0 if res.kept >= res.wanted else 1


def cmd_data_split(args) -> int:
    from afinar.data.split import split_file

    res = split_file(args.file, args.out, tuple(args.ratios), args.seed)
    if args.json:
        dump_json(res)
    else:
        out(f"train: {res['train']} ({res['n_train']})\nvalidation: {res['validation']} "
            f"({res['n_validation']})\ntest: {res['test']} ({res['n_test']})\n"
            f"stratified by label: {res['stratified']}")
    return 0


# -- models -------------------------------------------------------------------------------------
def add_models(sub) -> None:
    p = sub.add_parser("models", help="list and show base and custom models")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ls = msub.add_parser("list", help="base models in the registry and custom models")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--endpoint", help="list what a running afinar server offers instead "
                    "(e.g. http://127.0.0.1:8080)")
    ls.set_defaults(func=cmd_models_list)
    sh = msub.add_parser("show", help="details of one model")
    sh.add_argument("name")
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(func=cmd_models_show)
    pr = msub.add_parser("prepare", help="install/convert a model now (the default: the "
                         "default model) so later commands start fast")
    pr.add_argument("name", nargs="?")
    pr.set_defaults(func=cmd_models_prepare)
    ex = msub.add_parser("export", help="write a custom model for another runtime: GGUF "
                         "(llama.cpp, Ollama: with a Modelfile), merged safetensors, or the "
                         "LoRA adapter")
    ex.add_argument("name", help="custom model name (or a run directory)")
    ex.add_argument("--format", default="gguf", choices=["gguf", "safetensors", "adapter"])
    ex.add_argument("--quant", default="f16", choices=["f16", "q8_0"],
                    help="gguf: half precision, or 8-bit blocks (about half the size)")
    ex.add_argument("--output", help="folder to write into (default ./<name>-<format>)")
    ex.set_defaults(func=cmd_models_export)


def cmd_models_export(args) -> int:
    from afinar.models.export import export_model

    _quiet_libraries()
    settings = _settings(args)
    out_dir = Path(args.output or f"{Path(args.name).name}-{args.format}")
    bar = TqdmProgress(disable=args.quiet)
    files = export_model(args.name, settings, args.format, out_dir, args.quant, bar)
    bar.close()
    for f in files:
        out(f"wrote {f} ({f.stat().st_size / 2**20:,.1f} MB)")
    if args.format == "gguf":
        out(f"run it: ollama create {Path(args.name).name} -f {out_dir / 'Modelfile'}  |  "
            f"llama-cli -m {files[0]}")
    return 0


def cmd_models_list(args) -> int:
    from afinar.models.registry import BUILTIN_MODELS, builtin_status, list_custom_models

    if args.endpoint:
        return _models_list_remote(args)

    settings = _settings(args)
    base = [{"id": e.id, "name": e.name, "parameters": e.parameters, "source": e.package,
             "status": builtin_status(e, settings)} for e in BUILTIN_MODELS.values()]
    custom = [{"name": m["name"], "base_model": m["base_model"], "method": m["method"],
               "created_at": m["created_at"], "path": m["model_dir"]}
              for m in list_custom_models(settings)]
    aliases = settings.model_aliases
    if args.json:
        dump_json({"base_models": base, "custom_models": custom, "aliases": aliases})
        return 0
    out("Base models:")
    for b in base:
        out(f"  {b['id']:<28} {b['name']} ({b['parameters']}, from PyPI '{b['source']}'): "
            f"{b['status']}")
    out("Custom models:" + ("" if custom else " none yet (afinar train / afinar demo)"))
    for c in custom:
        out(f"  {c['name']:<28} {c['method']} of {c['base_model']}, {c['created_at']}")
    if aliases:
        out("Aliases:")
        for k, v in aliases.items():
            out(f"  {k} -> {v}")
    out("Any Hugging Face hub id, local model directory or .gguf file also works.")
    return 0


def cmd_models_prepare(args) -> int:
    from afinar.models.registry import resolve_model

    _quiet_libraries()
    settings = _settings(args)
    name = args.name or settings.default_model
    bar = TqdmProgress(disable=args.quiet)
    res = resolve_model(name, settings, bar)
    bar.close()
    out(f"{name}: ready at {res.path}")
    return 0


def cmd_models_show(args) -> int:
    from afinar.models.registry import (
        BUILTIN_MODELS,
        builtin_status,
        custom_model_record,
        resolve_model,
    )

    settings = _settings(args)
    if args.name in BUILTIN_MODELS:
        e = BUILTIN_MODELS[args.name]
        info = e.__dict__ | {"status": builtin_status(e, settings),
                             "gguf": str(e.gguf_path() or "")}
    elif (rec := custom_model_record(settings, args.name)) is not None:
        info = rec
    else:
        info = resolve_model(args.name, settings).to_dict()
    if args.json:
        dump_json(info)
        return 0
    for k, v in info.items():
        if isinstance(v, (dict, list)):
            v = json.dumps(v, ensure_ascii=False, default=str)
        out(f"{k:>16}: {v}")
    return 0


# -- train --------------------------------------------------------------------------------------
def add_train(sub) -> None:
    from afinar.training.config import BEDROCK_ALIASES, TrainConfig

    p = sub.add_parser("train", help="fine-tune (sft), continue pre-training (cpt), train "
                       "from scratch or a classifier (LoRA or full)",
                       description="Fine-tune a causal LM. Settings come from --config (YAML) "
                       "then flags; Bedrock names (epochCount, batchSize, learningRate, "
                       "learningRateWarmupSteps) are accepted too.")
    p.add_argument("--config", help="YAML file with any of the settings below")
    p.add_argument("--resume", action="store_true", help="continue the run in --output-dir "
                   "from its latest checkpoint")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    g = p.add_argument_group("script mode (SageMaker's training contract: SM_MODEL_DIR, "
                             "SM_CHANNEL_<NAME>, SM_HPS, ...; --name, --output-dir, "
                             "--train-data and --validation-data apply too)")
    g.add_argument("--script", help="run your own training script instead of afinar's trainer")
    g.add_argument("--source-dir", help="folder holding the script (copied into the job)")
    g.add_argument("--hyperparameters", nargs="*", default=[], metavar="KEY=VALUE",
                   help="passed to the script as --KEY VALUE and in SM_HPS")
    g.add_argument("--channel", action="append", default=[], metavar="NAME=PATH",
                   help="an input channel (SM_CHANNEL_NAME); repeatable")
    add_model_flags(p, TrainConfig, BEDROCK_ALIASES)
    p.set_defaults(func=cmd_train)


def cmd_train_script(args) -> int:
    from afinar.jobs.scripts import run_foreground
    from afinar.training.script import ScriptFailed, parse_hyperparameters

    channels = {}
    for c in args.channel:
        if "=" not in c:
            raise ConfigError(f"--channel '{c}' is not NAME=PATH")
        k, v = c.split("=", 1)
        channels[k] = v
    if getattr(args, "train_data", None):
        channels.setdefault("train", args.train_data)
    if getattr(args, "validation_data", None):
        channels.setdefault("validation", args.validation_data)
    res = run_foreground(_settings(args), args.script, source_dir=args.source_dir,
                     hyperparameters=parse_hyperparameters(args.hyperparameters),
                     inputs=channels, name=getattr(args, "name", None),
                     output_dir=getattr(args, "output_dir", None),
                     stream=None if args.json or args.quiet else
                     (lambda s: print(s, end="", flush=True)))
    if args.json:
        dump_json(res.to_dict())
    else:
        out(f"{res.status}: {res.name} (exit {res.exit_code}, {res.seconds:.0f} s); job folder "
            f"{res.job_dir}")
        if res.registered:
            out(f"  custom model '{res.name}' registered from {res.model_dir}")
        elif res.status == "Completed":
            out("  the model dir holds no Hugging Face model: nothing registered")
    if res.status != "Completed":
        raise ScriptFailed(res.failure_message)
    return 0


def cmd_train(args) -> int:
    from afinar.training.config import TrainConfig, load_yaml_config, parse_train_config
    from afinar.training.metrics import describe_validation
    from afinar.training.trainer import train

    if args.script:
        return cmd_train_script(args)
    _quiet_libraries()
    values = load_yaml_config(args.config) if args.config else {}
    values.update(collect(args, TrainConfig))
    if "train_data" not in values:
        raise ConfigError("no training data", hint="pass --train-data FILE or set train_data "
                          "in --config")
    cfg = parse_train_config(values, args.config or "command-line flags")
    settings = _settings(args)
    bar = TqdmProgress(disable=args.quiet or args.json)
    try:
        res = train(cfg, settings, bar, resume=args.resume)
    finally:
        bar.close()
    summary = {"name": res.name, "status": res.status, "output_dir": str(res.output_dir),
               "model_dir": str(res.model_dir) if res.model_dir else None, "steps": res.steps,
               "first_loss": res.first_loss, "train_loss": res.train_loss,
               "validation": res.validation, "tokens_per_second": round(res.tokens_per_second),
               "seconds": round(res.seconds, 1), "warnings": res.warnings,
               "auto_hyperparameters": res.auto}
    if res.distillation:
        summary["distillation"] = res.distillation
    if args.json:
        dump_json(summary)
        return 0
    for w in res.warnings:
        err(f"warning: {w}")
    out(f"{res.status}: {res.name} ({res.steps}/{res.total_steps} steps, {res.seconds:.0f} s, "
        f"{res.tokens_per_second:.0f} tokens/s)")
    if res.first_loss is not None:
        out(f"  training loss {res.first_loss:.4f} -> {res.train_loss:.4f}")
    if res.validation:
        out(f"  {describe_validation(res.validation)}")
    for role, d in (res.distillation or {}).items():
        out(f"  teacher's {role} answers: {d['kept']} of {d['prompts']} kept in {d['dataset']}"
            + (f" ({', '.join(f'{n} {w}' for w, n in d['rejected'].items())} left out)"
               if d["rejected"] else ""))
    out(f"  output: {res.output_dir}")
    if res.status == "stopped":
        out(f"  resume with: afinar train --output-dir {res.output_dir} --resume ...")
    return 0


# -- generate / chat ----------------------------------------------------------------------------
def _gen_flags(p) -> None:
    p.add_argument("--model", help="model id (default: the default model)")
    p.add_argument("--max-new-tokens", type=int_in(1, 32768), default=256)
    p.add_argument("--temperature", type=float_in(0, 2), default=0.0, help="0 = greedy")
    p.add_argument("--system", help="system prompt")


def add_generate(sub) -> None:
    p = sub.add_parser("generate", help="answer prompts with a base or custom model")
    p.add_argument("prompt", nargs="*", help="prompts (default: one per line of stdin)")
    _gen_flags(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_generate)
    c = sub.add_parser("chat", help="interactive chat with a base or custom model")
    _gen_flags(c)
    c.set_defaults(func=cmd_chat)


def _messages(system: str | None, turns: list[dict]) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + turns


def cmd_generate(args) -> int:
    from afinar.inference.generate import generate, load

    _quiet_libraries()
    settings = _settings(args)
    prompts = args.prompt or [ln.strip() for ln in sys.stdin if ln.strip()]
    if not prompts:
        raise ConfigError("no prompt given", hint='afinar generate --model M "your prompt"')
    lm = load(args.model or settings.default_model, settings, TqdmProgress(disable=True))
    msgs = [_messages(args.system, [{"role": "user", "content": p}]) for p in prompts]
    outs = generate(lm, msgs, args.max_new_tokens, temperature=args.temperature)
    if args.json:
        dump_json([{"prompt": p, "output": o} for p, o in zip(prompts, outs, strict=True)])
    else:
        for o in outs:
            out(o)
    return 0


def cmd_chat(args) -> int:
    from afinar.inference.generate import generate, load

    _quiet_libraries()
    settings = _settings(args)
    model = args.model or settings.default_model
    lm = load(model, settings, TqdmProgress(disable=True))
    out(f"chatting with {model} (Ctrl-D to quit, /reset to clear history)")
    history: list[dict] = []
    for line in sys.stdin if not sys.stdin.isatty() else iter(lambda: input("> "), None):
        line = line.strip()
        if not line:
            continue
        if line == "/reset":
            history = []
            continue
        history.append({"role": "user", "content": line})
        reply = generate(lm, [_messages(args.system, history)], args.max_new_tokens,
                         temperature=args.temperature)[0]
        history.append({"role": "assistant", "content": reply})
        out(reply)
    return 0


# -- eval ---------------------------------------------------------------------------------------
def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate models on a dataset, side by side")
    p.add_argument("--model", action="append", required=True,
                   help="model to evaluate (repeat to compare several)")
    p.add_argument("--data", required=True, help="test data with references")
    p.add_argument("--compare-base", action="store_true",
                   help="also evaluate each custom model's base model")
    p.add_argument("--limit", type=int_in(1), help="only the first N examples")
    p.add_argument("--max-new-tokens", type=int_in(1, 32768))
    p.add_argument("--batch-size", type=int_in(1, 1024), default=16)
    p.add_argument("--output-dir", help="write report.md and report.json here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    from afinar.eval.compare import format_table
    from afinar.jobs.evaluate import run_foreground

    _quiet_libraries()
    settings = _settings(args)
    if args.output_dir and Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        raise ConfigError(f"--output-dir {args.output_dir} is a file, not a folder",
                          hint="name a folder (it is created if missing)")
    bar = TqdmProgress(disable=args.quiet or args.json)
    data = args.data if "://" in args.data else str(Path(args.data).expanduser().resolve())
    body = {"models": list(args.model), "data": data,
            "compareBase": args.compare_base, "maxExamples": args.limit,
            "maxNewTokens": args.max_new_tokens, "batchSize": args.batch_size}
    name, report, folder = run_foreground(
        settings, {k: v for k, v in body.items() if v is not None}, bar)
    bar.close()
    if args.output_dir:
        import shutil
        shutil.copytree(folder, args.output_dir, dirs_exist_ok=True)
        if not args.json:
            out(f"report: {Path(args.output_dir) / 'report.md'} and "
                f"{Path(args.output_dir) / 'report.html'} (evaluation job {name})")
    if args.json:
        dump_json(report)
        return 0
    out(format_table(report))
    if report.get("differences"):
        out(f"\n{len(report['differences'])} example(s) where the models differ, e.g.:")
        for i in report["differences"][:3]:
            ex = report["examples"][i]
            out(f"  line {ex['line']}: {ex['prompt'][:80]}")
            for m, o in ex["outputs"].items():
                out(f"    {m[:30]}: {o[:100]}")
    if args.output_dir:
        out(f"\nreport: {Path(args.output_dir) / 'report.md'}")
    return 0


# -- demo ---------------------------------------------------------------------------------------
def add_demo(sub) -> None:
    from afinar.demo.stripe import DemoOptions
    from afinar.demo.tools import ToolsDemoOptions

    d = DemoOptions()
    p = sub.add_parser("demo", help="end-to-end demos: 'stripe' (default) fine-tunes the "
                       "default model to write Stripe API calls and compares it with the base "
                       "model; 'cpt' continues its pre-training on Python's library docs and "
                       "measures held-out perplexity; 'tools' fine-tunes it to call Stripe "
                       "tools and scores the tool calls it returns through the openai client")
    p.add_argument("which", nargs="?", default="stripe", choices=["stripe", "cpt", "tools"],
                   help="which demo (default: stripe)")
    # None: each demo's own default (stripe: DemoOptions, tools: ToolsDemoOptions)
    for flag, kind in (("--train-examples", int), ("--test-examples", int),
                       ("--validation-examples", int), ("--epochs", int), ("--batch-size", int),
                       ("--learning-rate", float), ("--lora-r", int)):
        field = flag[2:].replace("-", "_")
        tools_default = getattr(ToolsDemoOptions(), field, "-")
        p.add_argument(flag, type=kind, default=None,
                       help=f"default: {getattr(d, field)} for stripe, {tools_default} for tools")
    p.add_argument("--lora-layers", type=int_in(1), default=None,
                   help=f"LoRA on the top N layers only (0: all layers; default "
                        f"{d.lora_layers} for stripe, 15 for cpt)")
    p.add_argument("--seed", type=int_in(0), default=d.seed)
    p.add_argument("--model", dest="base_model", help="base model (default: the default model)")
    p.add_argument("--output-dir", help="where to write data, model and report")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from afinar.demo.stripe import DemoOptions, run_demo
    from afinar.eval.compare import format_table

    _quiet_libraries()
    if args.which == "cpt":
        return _cmd_demo_cpt(args)
    if args.which == "tools":
        return _cmd_demo_tools(args)
    settings = _settings(args)
    opts = DemoOptions(**{k: getattr(args, k) for k in DemoOptions.__dataclass_fields__
                          if getattr(args, k, None) is not None})
    opts.lora_layers = opts.lora_layers or None
    bar = TqdmProgress(disable=args.quiet or args.json)
    say = (lambda s: None) if args.json else out
    report = run_demo(opts, settings, bar, say)
    bar.close()
    if args.json:
        dump_json({k: v for k, v in report.items() if k != "examples"})
        return 0
    out("\nResults on held-out requests:")
    out(format_table(report))
    out(f"\nTotal time {report['demo']['timings_s']['total']:.0f} s. Report: "
        f"{report['paths']['markdown']} (JSON: {report['paths']['json']})")
    out(f"Custom model: {report['paths']['name']}  (try: afinar chat --model "
        f"{report['paths']['name']})")
    return 0


def _cmd_demo_cpt(args) -> int:
    from afinar.demo.cpt import CptDemoOptions, run_cpt_demo

    opts = CptDemoOptions(base_model=args.base_model, output_dir=args.output_dir,
                          seed=args.seed)
    if args.lora_layers is not None:
        opts.lora_layers = args.lora_layers or None
    bar = TqdmProgress(disable=args.quiet or args.json)
    say = (lambda s: None) if args.json else out
    report = run_cpt_demo(opts, _settings(args), bar, say)
    bar.close()
    if args.json:
        dump_json(report)
    return 0


def _cmd_demo_tools(args) -> int:
    from afinar.demo.tools import ToolsDemoOptions, run_tools_demo

    if args.validation_examples is not None:
        raise ConfigError("--validation-examples: the tools demo holds no validation split",
                          hint="use --train-examples / --test-examples")
    opts = ToolsDemoOptions(**{k: getattr(args, k) for k in ToolsDemoOptions.__dataclass_fields__
                               if getattr(args, k, None) is not None})
    if args.lora_layers is not None:
        opts.lora_layers = args.lora_layers or None
    bar = TqdmProgress(disable=args.quiet or args.json)
    say = (lambda s: None) if args.json else out
    report = run_tools_demo(opts, _settings(args), bar, say)
    bar.close()
    if args.json:
        dump_json({k: v for k, v in report.items() if k != "examples"})
        return 0
    out("\nTool calls on held-out requests (openai client, tools=...):")
    out(f"  {'model':<40} {'calls a tool':>12} {'right tool':>11} {'exact args':>11}")
    for m in report["models"]:
        out(f"  {m['model']:<40} {m['tool_call_rate']:>12.0%} {m['right_function']:>11.0%} "
            f"{m['exact_arguments']:>11.0%}")
    lp = report["loop"]
    out(f"\nFull loop with the tuned model: {lp['request']!r}\n  call: {lp['call']}\n"
        f"  tool result: {lp.get('tool_result')}\n  answer: {lp['answer']!r}")
    out(f"\nTotal time {report['timings_s']['total']:.0f} s. Report: "
        f"{report['output_dir']}/report.json  Custom model: {report['name']}")
    return 0


def _models_list_remote(args) -> int:
    from afinar.cli.service_commands import call, client

    b = client(args)
    found = call(b.list_foundation_models)["modelSummaries"]
    custom = call(b.list_custom_models, maxResults=1000)["modelSummaries"]
    if args.json:
        dump_json({"foundation_models": found, "custom_models": custom})
        return 0
    out(f"Foundation models at {args.endpoint}:")
    for m in found:
        out(f"  {m['modelId']:<44} {m.get('modelName', '')}")
    out("Custom models:" + ("" if custom else " none"))
    for m in custom:
        out(f"  {m['modelName']:<28} {m['modelStatus']:<8} {m['customizationType']:<24} "
            f"{m['creationTime']:%Y-%m-%d %H:%M}  {m['modelArn']}")
    return 0


# -- predict (classification) -----------------------------------------------------------------
def add_predict(sub) -> None:
    p = sub.add_parser("predict", help="label text with a classification model")
    p.add_argument("--model", required=True, help="a custom classification model (name or dir)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--text", action="append", help="text to label (repeatable)")
    g.add_argument("--data", help="a file of {\"text\"[, \"label\"]} records; with labels, "
                   "accuracy, macro-F1 and the confusion matrix are reported")
    p.add_argument("--max-length", type=int_in(8, 32768), default=512)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args) -> int:
    from transformers import AutoModelForSequenceClassification

    from afinar.eval.classification import classification_metrics, format_metrics
    from afinar.inference.classify import predict_ids
    from afinar.models.loading import load_tokenizer
    from afinar.models.registry import resolve_model

    _quiet_libraries()
    res = resolve_model(args.model, _settings(args))
    try:
        model = AutoModelForSequenceClassification.from_pretrained(res.path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"'{args.model}' is not a classification model ({e})",
                          hint="train one with afinar train --type classify") from e
    tok = load_tokenizer(res.path)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    gold = None
    if args.text:
        texts = args.text
    else:
        from afinar.data.readers import read_records
        from afinar.data.schema import normalize
        norm = normalize(read_records(args.data))
        if norm.issues:
            from afinar.errors import DataError
            raise DataError(f"{args.data}: {len(norm.issues)} invalid record(s)", norm.issues)
        texts = [e.text or e.content_key() for e in norm.examples]
        labels = [e.label for e in norm.examples]
        if all(x is not None for x in labels):
            unknown = sorted({str(x) for x in labels} - set(names))
            if unknown:
                raise ConfigError(f"labels {unknown} in {args.data} are not the model's "
                                  f"({names})")
            gold = [names.index(str(x)) for x in labels]
    probs = predict_ids(model, tok, texts, args.max_length)
    pred = probs.argmax(-1).tolist()
    rows = [{"text": t, "label": names[p], "score": round(float(probs[i, p]), 4)}
            for i, (t, p) in enumerate(zip(texts, pred, strict=True))]
    metrics = classification_metrics(gold, pred, names) if gold is not None else None
    if args.json:
        dump_json(rows if metrics is None else {"predictions": rows, "metrics": metrics})
        return 0
    for r in rows[:50]:
        out(f"{r['label']:<16} {r['score']:.3f}  {r['text'][:100]}")
    if len(rows) > 50:
        out(f"... {len(rows) - 50} more (use --json for all)")
    if metrics:
        out("")
        out(format_metrics(metrics))
    return 0


REGISTRY = [add_demo, add_data, add_train, add_eval, add_generate, add_predict, add_models]


