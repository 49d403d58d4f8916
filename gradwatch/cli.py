"""The `gradwatch` command line.

Exit codes: 0 success, 1 a check failed (doctor), 2 bad input or a missing optional package
(one line says which). Generators (``rules``, ``dashboards``, ``targets``, ``metrics-doc``)
print to stdout unless ``--out`` names a place, so nothing lands in the current directory
unasked; ``--out -`` is stdout everywhere.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import cli_values as values
from .cli_values import STDOUT, OneLineParser, fail, one_line
from .monitor.records.alert_table import RUNBOOK_BASE_URL, check_runbook_base_url
from .monitor.report.heatmap_colours import COLOUR_MODES

#: Optional packages -> the extra that installs them.
EXTRAS = {"grafana_foundation_sdk": "dashboards", "lightning": "lightning",
          "jsonargparse": "cli", "rich": "demo"}


@contextmanager
def _writing(option: str, where: str) -> Iterator[None]:
    """An OSError while writing where ``option`` says becomes one line naming the option."""
    try:
        yield
    except OSError as exc:
        raise ValueError(f"{option} {where!r}: cannot write there ({exc.strerror or exc}); "
                         f"name a writable place") from exc


def _emit(text: str, out: str) -> None:
    """``text`` to stdout (``out`` is ``-``) or into the file ``out``."""
    if out == STDOUT:
        sys.stdout.write(text)
        return
    path = Path(out)
    with _writing("--out", out):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")


def _thresholds(args: argparse.Namespace):
    """The Thresholds of ``--thresholds`` (defaults without); a file that does not read as
    one is a ValueError naming the option, in one line."""
    from .monitor.records.thresholds import Thresholds

    if not args.thresholds:
        return Thresholds()
    try:
        return Thresholds.from_file(args.thresholds)
    except Exception as exc:  # YAML's, the file's or a threshold's own: all bad input here
        reason = str(exc).removeprefix(f"{args.thresholds}: ")
        raise ValueError(f"--thresholds {args.thresholds!r}: {one_line(reason)}; write a YAML "
                         f"mapping of threshold names to numbers, e.g. 'explosion_norm: 100' "
                         f"(the names: monitor/records/thresholds.py)") from exc


def _demo(args: argparse.Namespace) -> int:
    from .demo import run

    run(out_dir=args.out, port=args.port, every_n_steps=args.every_n_steps,
        progress=not args.no_progress, alertmanager_url=args.alertmanager_url,
        pushgateway_url=args.pushgateway_url)
    return 0


def _report(args: argparse.Namespace) -> int:
    from .monitor.report.html import find_runs, load_run, render_report, write_report, write_reports

    path = Path(args.path)
    if args.out == STDOUT:
        _emit(render_report(load_run(path), _thresholds(args), args.colours), STDOUT)
        return 0
    if args.out or (path.is_dir() and path in find_runs(path)):
        written = [write_report(path, args.out, _thresholds(args), args.colours)]
    else:
        written = write_reports(path, _thresholds(args), args.colours)
    for report in written:
        print(f"wrote {report}")
    return 0


def _rules(args: argparse.Namespace) -> int:
    from .monitor.ops.rules import render_rules

    check_runbook_base_url(args.runbook_base_url)
    _emit(render_rules(_thresholds(args), args.runbook_base_url), args.out)
    return 0


def _dashboards(args: argparse.Namespace) -> int:
    from .monitor.ops.dashboards import render_dashboards, write_dashboards

    if args.out == STDOUT:   # several files: one JSON object, file name -> dashboard
        boards = {name: json.loads(text) for name, text in render_dashboards(
            _thresholds(args)).items()}
        _emit(json.dumps(boards, indent=2, sort_keys=True) + "\n", STDOUT)
        return 0
    thresholds = _thresholds(args)
    with _writing("--out", args.out):
        written = write_dashboards(args.out, thresholds)
    for path in written:
        print(f"wrote {path}")
    return 0


def _targets(args: argparse.Namespace) -> int:
    from .monitor.ops.targets import target_group, write_targets

    labels = dict(_key_value(item) for item in args.label)
    if args.out == STDOUT:
        group = target_group(args.host, args.port, args.ranks, labels)
        _emit(json.dumps(group, indent=2) + "\n", STDOUT)
    else:
        with _writing("--out", args.out):
            written = write_targets(args.host, args.port, args.ranks, labels, args.out)
        print(f"wrote {written}")
    return 0


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--label must look like key=value, got {item!r}")
    return key, value


def _doctor(args: argparse.Namespace) -> int:
    from .monitor.ops.doctor import run_checks

    if not (args.metrics_url or args.prometheus_url or args.alertmanager_url):
        return fail("doctor", "nothing to check: give --metrics-url (the trainer's /metrics, "
                    "named by its start-up line), --prometheus-url and/or --alertmanager-url, "
                    "e.g. gradwatch doctor --metrics-url http://127.0.0.1:9400/metrics")

    checks = run_checks(args.metrics_url, args.prometheus_url, args.alertmanager_url,
                        args.thresholds, args.timeout, args.wait, args.test_alert)
    for check in checks:
        print(check.line())
    return 1 if any(check.ok is False for check in checks) else 0


def _metrics_doc(args: argparse.Namespace) -> int:
    from .monitor.records.metrics import render_arguments, render_markdown

    if args.arguments:
        from .callbacks import TrainingDiagnostics

        _emit(render_arguments(TrainingDiagnostics), args.out)
    else:
        _emit(render_markdown(), args.out)
    return 0


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, []) or action.help is None:
            return action.help or ""
        return super()._get_help_string(action) or ""


def _command(commands: Any, name: str, handler: Callable[[argparse.Namespace], int],
             help: str, description: str, thresholds: bool = False) -> argparse.ArgumentParser:
    sub: argparse.ArgumentParser = commands.add_parser(
        name, help=help, description=description, formatter_class=_HelpFormatter)
    sub.set_defaults(handler=handler)
    if thresholds:
        sub.add_argument("--thresholds", metavar="FILE", type=values.input_file,
                         help="YAML/JSON file of Thresholds overrides (name: value)")
    return sub


def _add_demo(commands: Any) -> None:
    demo = _command(commands, "demo", _demo, "train four small models on CPU and show what gradwatch "
                   "catches", "Train a healthy, a vanishing, an exploding and a diverging "
                   "(NaN) model with TrainingDiagnostics; print alerts as they fire, a verdict "
                   "table, and where the TensorBoard logs and HTML reports are.")
    demo.add_argument("--out", default="gradwatch_demo", type=values.output_folder,
                      help="TensorBoard log directory (created): one run folder per model")
    demo.add_argument("--port", type=values.port, default=9400,
                      help="serve /metrics on this port during the runs (0: any free port)")
    demo.add_argument("--every-n-steps", type=values.positive_int, default=10,
                      help="full per-layer statistics every N steps")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.add_argument("--alertmanager-url", type=values.http_url, help="also send the "
                      "alerts to this Alertmanager (none is contacted unless named)")
    demo.add_argument("--pushgateway-url", type=values.http_url, help="also push the "
                      "metrics to this Pushgateway (none is contacted unless named)")


def _add_report(commands: Any) -> None:
    report = _command(commands, "report", _report, "write the HTML report of a finished run",
                     "Write a self-contained HTML report (gradient-norm heatmap over depth x "
                     "step, activations by depth, loss and norm, alert timeline) from a run's "
                     "TensorBoard event files; a folder of runs gets one report per run.",
                     thresholds=True)
    report.add_argument("path", type=values.existing_path, help="a run directory (e.g. lightning_logs/version_0) or a "
                        "folder of runs")
    report.add_argument("--out", type=values.output_file, help="output file, - for stdout (default: "
                        "<run>/gradwatch-report.html, in each run of a folder of runs)")
    report.add_argument("--colours", choices=COLOUR_MODES, default="thresholds",
                        help="heatmap colours: regime bands fixed by the thresholds (the same "
                        "in every report) or relative to this run's range")


def _add_rules(commands: Any) -> None:
    rules = _command(commands, "rules", _rules, "write the Prometheus alert and recording rules",
                    "Generate the rules from the Thresholds.", thresholds=True)
    rules.add_argument("--out", default=STDOUT, metavar="FILE", type=values.output_file, help="the rule file "
                       "(the repository's is deploy/prometheus/rules/gradwatch.rules.yml), "
                       "- for stdout")
    rules.add_argument("--runbook-base-url", default=RUNBOOK_BASE_URL,
                       help="where docs/runbook.md is served: each alert's runbook_url is "
                            "this plus #<alert name lower-cased>")


def _add_dashboards(commands: Any) -> None:
    dashboards = _command(commands, "dashboards", _dashboards, "write the Grafana dashboards",
                         "Generate the Grafana dashboards (JSON) from the Thresholds.",
                         thresholds=True)
    dashboards.add_argument("--out", default=STDOUT, metavar="FOLDER", type=values.output_folder,
                            help="folder for one "
                            "JSON file per dashboard (the repository's is dashboards/); - prints "
                            "them as one JSON object, file name -> dashboard")


def _add_targets(commands: Any) -> None:
    targets = _command(commands, "targets", _targets, "write a Prometheus file_sd target file for a node",
                      "Write <out>/<host>.json listing host:port+r for every local rank r; "
                      "Prometheus picks it up without a restart.")
    targets.add_argument("--host", required=True, type=values.non_empty, help="the node's host name or address")
    targets.add_argument("--port", type=values.port, default=9400, help="the base prometheus_port")
    targets.add_argument("--ranks", type=values.positive_int, default=1, help="processes on the node")
    targets.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                         help="extra target label (repeatable)")
    targets.add_argument("--out", default=STDOUT, metavar="FOLDER", type=values.output_folder,
                         help="the folder "
                         "Prometheus watches (the compose stack's is deploy/prometheus/targets)"
                         " for <host>.json; - prints the file's JSON")


def _add_doctor(commands: Any) -> None:
    doctor = _command(commands, "doctor", _doctor, "check the path from trainer to alert",
                     "Check: thresholds valid, the trainer's /metrics reachable, Prometheus "
                     "scraping it, the alert rules loaded, Prometheus's Alertmanager, "
                     "Alertmanager reachable, and (--test-alert) a test alert delivered to "
                     "the receiver. One pass/FAIL/skip line each, a failure with its fix; "
                     "exit code 1 when a check fails.",
                     thresholds=True)
    doctor.add_argument("--metrics-url", type=values.http_url, help="e.g. http://127.0.0.1:9400/metrics")
    doctor.add_argument("--prometheus-url", type=values.http_url, help="e.g. http://127.0.0.1:9090")
    doctor.add_argument("--alertmanager-url", type=values.http_url, help="e.g. http://127.0.0.1:9093")
    doctor.add_argument("--timeout", type=values.seconds, default=5.0, help="seconds per request")
    doctor.add_argument("--wait", type=values.seconds_or_zero, default=30.0,
                        help="seconds to wait for the trainer's first step and for the test "
                             "alert's delivery")
    doctor.add_argument("--test-alert", action="store_true",
                        help="post a test alert to Alertmanager (resolved right after) and "
                             "check that its receiver is notified")


def _add_metrics_doc(commands: Any) -> None:
    doc = _command(commands, "metrics-doc", _metrics_doc, "write the metrics reference",
                  "Render every gradwatch_* metric with its meaning, unit, labels and healthy "
                  "range as markdown (docs/metrics.md).")
    doc.add_argument("--out", default=STDOUT, metavar="FILE", type=values.output_file,
                     help="output file (the repository's is docs/metrics.md), - for stdout")
    doc.add_argument("--arguments", action="store_true", help="the arguments of "
                     "TrainingDiagnostics instead (the repository's is docs/arguments.md)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="gradwatch", formatter_class=_HelpFormatter,
        description="Training diagnostics for PyTorch Lightning: per-layer "
        "gradient, activation and update statistics, alerts, dashboards.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_demo, _add_report, _add_rules, _add_dashboards, _add_targets, _add_doctor,
                _add_metrics_doc):
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ModuleNotFoundError as exc:
        top = (exc.name or "").partition(".")[0]
        if top not in EXTRAS:
            raise   # not an optional package: a broken install, shown in full
        return fail(args.command, f"needs the optional package {top}: "
                                  f"pip install 'gradwatch[{EXTRAS[top]}]'")
    except (ValueError, OSError) as exc:
        return fail(args.command, str(exc))


if __name__ == "__main__":
    sys.exit(main())
