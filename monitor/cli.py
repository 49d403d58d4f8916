"""The `gradwatch` command line."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from .demo import run

    run(out_dir=args.out, steps=args.steps, port=args.port, every_n_steps=args.every_n_steps)
    return 0


def _metrics_doc(args: argparse.Namespace) -> int:
    from .metrics import render_markdown

    text = render_markdown()
    if args.out == "-":
        sys.stdout.write(text)
    else:
        with open(args.out, "w", encoding="utf-8") as out:
            out.write(text)
        print(f"wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradwatch", description="Training diagnostics for PyTorch Lightning.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser("demo", help="train small models on CPU and show what "
                               "gradwatch sees", description="Train a healthy and a vanishing "
                               "model with TrainingDiagnostics; print per-layer figures.")
    demo.add_argument("--out", default="gradwatch_demo", help="TensorBoard log directory")
    demo.add_argument("--steps", type=int, default=200, help="training steps per run")
    demo.add_argument("--port", type=int, default=9400,
                      help="serve /metrics on this port during the runs (0: any free port)")
    demo.add_argument("--every-n-steps", type=int, default=20,
                      help="full per-layer statistics every N steps")
    demo.set_defaults(handler=_demo)
    doc = commands.add_parser("metrics-doc", help="write the metrics reference (docs/metrics.md)",
                              description="Render every gradwatch_* metric with its meaning, "
                              "unit, labels and healthy range as markdown.")
    doc.add_argument("--out", default="docs/metrics.md", help="output path, - for stdout")
    doc.set_defaults(handler=_metrics_doc)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ValueError as exc:
        print(f"gradwatch {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
