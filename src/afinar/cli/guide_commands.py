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
    from afinar.advisor import advise, inspect_data, load_rules, to_json

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
            choices = [str(c).lower() if not isinstance(c, bool) else ("yes" if c else "no")
                       for c in q["choices"]]
            while True:
                v = input(f"{q['prompt']} [{'/'.join(choices)}]: ").strip().lower()
                if v in choices:
                    answers[k] = v
                    break
                print(f"  please answer one of: {', '.join(choices)}")
    a = advise(answers, findings, cmds)
    out(to_json(a) if args.json else a.render())
    return 0


REGISTRY = [add_advise]
