"""The ``technogan`` console script: a thin argparse shell over the stage functions.

Each command lives in its own module, which provides ``add_arguments(parser)`` and
``main(args) -> int``. Adding a command is one line in ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from pipeline.errors import UserError

# name, module, one-line help
COMMANDS: list[tuple[str, str, str]] = [
    ("synth", "pipeline.synth", "write synthetic techno tracks (the embedded default data)"),
    ("scrape", "pipeline.scrape.cli", "YouTube playlists -> raw audio + manifest.jsonl (sharded, resumable)"),
    ("segment", "pipeline.segment", "audio files -> 5 s log-mel shards + index"),
    ("plot", "pipeline.plot", "plot a grid of real mels from a dataset"),
    ("models", "pipeline.models.summary", "print a model's layers as the study's figures (Conv2d-1, ...)"),
    ("package", "serving.package", "build model-store/technogan.mar from the champion, a run or a checkpoint"),
    ("serve", "serving.serve", "serve technogan.mar with TorchServe on 127.0.0.1 until Ctrl-C"),
    ("studio", "serving.studio", "a web page to generate, see and hear the served model (and older versions)"),
    ("gate", "serving.gate", "the POST-only gate in front of TorchServe's inference port (the chart's server)"),
    ("train", "pipeline.train.cli", "train one GAN of the study on a mel dataset, tracked in MLflow"),
    ("evaluate", "pipeline.evaluate.evaluate", "score a training run against the real data; metrics to MLflow"),
    ("promote", "pipeline.evaluate.promote", "register the best finished run's generator as the champion"),
    ("generate", "pipeline.generate", "generate mels as png/wav/mp3/ogg/npy, or one long-form piece (--seconds), "
                                      "from a checkpoint, run or alias (no server)"),
    ("run", "pipeline.run", "the whole chain from a config preset (the main job)"),
    ("wait", "pipeline.cluster", "wait until Kubernetes Jobs complete (exit 1 if one failed, 124 on timeout)"),
    ("rollout", "pipeline.cluster", "roll the serving Deployment onto an archive (pod-template sha256 annotation)"),
]


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the chosen command's module is imported (startup stays fast,
    and one stage's heavy dependencies never slow down or break another's)."""
    argv = sys.argv[1:] if argv is None else argv
    names = {name for name, _, _ in COMMANDS}
    chosen = next((a for a in argv if a in names), None)
    parser = argparse.ArgumentParser(
        prog="technogan",
        description="Learn to generate techno: data, GAN training, evaluation and serving.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name, help_text in COMMANDS:
        if name != chosen:
            sub.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(module_name)
        # allow_abbrev=False: a truncated flag in a script or the Helm chart (`--merg`) is an
        # error, not silently another flag
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip(),
                           allow_abbrev=False,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_main=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args._main(args) or 0)
    except UserError as e:
        print(f"technogan {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"technogan {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
