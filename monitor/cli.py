"""The `gradwatch` command line.

Exit codes: 0 success, 1 a check failed (doctor), 2 bad input (a message says which).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .alert_table import RUNBOOK_BASE_URL


def _thresholds(args: argparse.Namespace):
    from .thresholds import Thresholds

    return Thresholds.from_file(args.thresholds) if args.thresholds else Thresholds()


def _demo(args: argparse.Namespace) -> int:
    from .demo import run

    run(out_dir=args.out, port=args.port, every_n_steps=args.every_n_steps,
        progress=not args.no_progress, alertmanager_url=args.alertmanager_url,
        pushgateway_url=args.pushgateway_url)
    return 0


def _report(args: argparse.Namespace) -> int:
    from .report import find_runs, write_report, write_reports

    path = Path(args.path)
    if args.out or (path.is_dir() and path in find_runs(path)):
        written = [write_report(path, args.out, _thresholds(args))]
    else:
        written = write_reports(path, _thresholds(args))
    for report in written:
        print(f"wrote {report}")
    return 0


def _rules(args: argparse.Namespace) -> int:
    from .rules import write_rules

    print(f"wrote {write_rules(args.out, _thresholds(args), args.runbook_base_url)}")
    return 0


def _dashboards(args: argparse.Namespace) -> int:
    from .dashboards import write_dashboards

    for path in write_dashboards(args.out, _thresholds(args)):
        print(f"wrote {path}")
    return 0


def _targets(args: argparse.Namespace) -> int:
    from .targets import write_targets

    labels = dict(_key_value(item) for item in args.label)
    print(f"wrote {write_targets(args.host, args.port, args.ranks, labels, args.out)}")
    return 0


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--label must look like key=value, got {item!r}")
    return key, value


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import run_checks

    checks = run_checks(args.metrics_url, args.prometheus_url, args.alertmanager_url,
                        args.thresholds, args.timeout, args.wait, args.test_alert)
    for check in checks:
        print(check.line())
    return 1 if any(check.ok is False for check in checks) else 0


def _metrics_doc(args: argparse.Namespace) -> int:
    from .metrics import render_markdown

    text = render_markdown()
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradwatch", description="Training diagnostics for PyTorch Lightning: per-layer "
        "gradient, activation and update statistics, alerts, dashboards.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler, help: str, description: str, thresholds: bool = False):
        sub = commands.add_parser(name, help=help, description=description)
        sub.set_defaults(handler=handler)
        if thresholds:
            sub.add_argument("--thresholds", metavar="FILE",
                             help="YAML/JSON file of Thresholds overrides (name: value)")
        return sub

    demo = command("demo", _demo, "train four small models on CPU and show what gradwatch "
                   "catches", "Train a healthy, a vanishing, an exploding and a diverging "
                   "(NaN) model with TrainingDiagnostics; print alerts as they fire, a verdict "
                   "table, and where the TensorBoard logs and HTML reports are.")
    demo.add_argument("--out", default="gradwatch_demo", help="TensorBoard log directory")
    demo.add_argument("--port", type=int, default=9400,
                      help="serve /metrics on this port during the runs (0: any free port)")
    demo.add_argument("--every-n-steps", type=int, default=10,
                      help="full per-layer statistics every N steps")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.add_argument("--alertmanager-url", help="send alerts there (default: "
                      "http://127.0.0.1:9093 when it answers)")
    demo.add_argument("--pushgateway-url", help="push metrics there (default: "
                      "http://127.0.0.1:9091 when it answers)")

    report = command("report", _report, "write the HTML report of a finished run",
                     "Write a self-contained HTML report (gradient-norm heatmap over depth x "
                     "step, activations by depth, loss and norm, alert timeline) from a run's "
                     "TensorBoard event files; a folder of runs gets one report per run.",
                     thresholds=True)
    report.add_argument("path", help="a run directory (e.g. lightning_logs/version_0) or a "
                        "folder of runs")
    report.add_argument("--out", help="output file (default: <run>/gradwatch-report.html)")

    rules = command("rules", _rules, "write the Prometheus alert and recording rules",
                    "Generate the rules from the Thresholds.", thresholds=True)
    rules.add_argument("--out", default="deploy/prometheus/rules/gradwatch.rules.yml")
    rules.add_argument("--runbook-base-url", default=RUNBOOK_BASE_URL,
                       help="where docs/runbook.md is served: each alert's runbook_url is "
                            "this plus #<alert name lower-cased> (default: %(default)s)")

    dashboards = command("dashboards", _dashboards, "write the Grafana dashboards",
                         "Generate the Grafana dashboards (JSON) from the Thresholds.",
                         thresholds=True)
    dashboards.add_argument("--out", default="dashboards", help="output folder")

    targets = command("targets", _targets, "write a Prometheus file_sd target file for a node",
                      "Write <out>/<host>.json listing host:port+r for every local rank r; "
                      "Prometheus picks it up without a restart.")
    targets.add_argument("--host", required=True, help="the node's host name or address")
    targets.add_argument("--port", type=int, default=9400, help="the base prometheus_port")
    targets.add_argument("--ranks", type=int, default=1, help="processes on the node")
    targets.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                         help="extra target label (repeatable)")
    targets.add_argument("--out", default="deploy/prometheus/targets", help="target folder")

    doctor = command("doctor", _doctor, "check the path from trainer to alert",
                     "Check: thresholds valid, the trainer's /metrics reachable, Prometheus "
                     "scraping it, the alert rules loaded, Prometheus's Alertmanager, "
                     "Alertmanager reachable, and (--test-alert) a test alert delivered to "
                     "the receiver. One pass/FAIL/skip line each, a failure with its fix; "
                     "exit code 1 when a check fails.",
                     thresholds=True)
    doctor.add_argument("--metrics-url", help="e.g. http://127.0.0.1:9400/metrics")
    doctor.add_argument("--prometheus-url", help="e.g. http://127.0.0.1:9090")
    doctor.add_argument("--alertmanager-url", help="e.g. http://127.0.0.1:9093")
    doctor.add_argument("--timeout", type=float, default=5.0, help="seconds per request")
    doctor.add_argument("--wait", type=float, default=30.0,
                        help="seconds to wait for the trainer's first step and for the test "
                             "alert's delivery")
    doctor.add_argument("--test-alert", action="store_true",
                        help="post a test alert to Alertmanager (resolved right after) and "
                             "check that its receiver is notified")

    doc = command("metrics-doc", _metrics_doc, "write the metrics reference",
                  "Render every gradwatch_* metric with its meaning, unit, labels and healthy "
                  "range as markdown (docs/metrics.md).")
    doc.add_argument("--out", default="docs/metrics.md", help="output path, - for stdout")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, OSError) as exc:
        print(f"gradwatch {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
