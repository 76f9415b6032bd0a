"""`afinar` entry point: parse, dispatch, and turn typed errors into readable messages."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from afinar import __version__
from afinar.cli import commands, guide_commands, kb_commands, service_commands
from afinar.cli.args import Parser
from afinar.cli.render import err
from afinar.errors import AfinarError


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="afinar", description="Self-hosted model customization: "
                                "data checks, fine-tuning, continued pre-training, "
                                "classification, evaluation and serving.")
    p.add_argument("--version", action="version", version=f"afinar {__version__}")
    p.add_argument("--home", help="home directory (default $AFINAR_HOME or ~/.afinar)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in (commands.REGISTRY + service_commands.REGISTRY + kb_commands.REGISTRY
                     + guide_commands.REGISTRY):
        register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except AfinarError as e:
        err(f"error: {e}")
        return e.exit_code
    except KeyboardInterrupt:
        err("interrupted: checkpoints and logs written so far are kept")
        return 130


if __name__ == "__main__":
    sys.exit(main())
