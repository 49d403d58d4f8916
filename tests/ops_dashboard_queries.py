"""Every PromQL query of a Grafana dashboard JSON, ready to send to Prometheus.

Grafana substitutes template variables before it queries; these helpers do the same with the
values a test chooses, so a test can prove each panel returns data without a Grafana server.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

#: What Grafana would put for its built-in interval variables (test Prometheus scrapes at 1s).
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")


def dashboard_queries(dashboard: dict) -> Iterator[tuple[str, str, bool]]:
    """(where, expr, instant) for every panel target, annotation and query variable of
    ``dashboard``; ``instant`` when Grafana asks for the latest value only (a range query
    over the dashboard's time range otherwise: graphs, annotations, variables).

    ``label_values(selector, label)`` variables yield their selector, which must return data.
    """
    for panel in dashboard.get("panels", []):
        for target in panel.get("targets", []):
            yield (f"panel {panel['title']!r} {target['refId']}", target["expr"],
                   bool(target.get("instant")))
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if "expr" in annotation:
            yield f"annotation {annotation['name']!r}", annotation["expr"], False
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable["type"] == "query":
            match = LABEL_VALUES.match(variable["query"])
            expr = match["selector"] if match else variable["query"]
            yield f"variable {variable['name']!r}", expr, False


def dashboard_exprs(dashboard: dict) -> Iterator[tuple[str, str]]:
    """(where, expr) of every query of ``dashboard`` (see dashboard_queries)."""
    for where, expr, _ in dashboard_queries(dashboard):
        yield where, expr


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replace $name and ${name} by ``values`` (then Grafana's built-ins); unknown names stay,
    so a forgotten variable shows up as a PromQL error."""
    values = {**BUILTINS, **values}

    def replace(match: re.Match) -> str:
        name = match["braced"] or match["plain"]
        return values.get(name, match[0])

    return re.sub(r"\$\{(?P<braced>\w+)\}|\$(?P<plain>\w+)", replace, expr)


#: Figures only some models have (the test targets are MLPs trained with SGD): attention, output
#: logits (2+ outputs), Adam's second moment.
MODEL_DEPENDENT = ("attention_logit", "attention_entropy", "output_logit_", "adam_eps_dominated")
