#!/usr/bin/env python3
"""The checks of scripts/check-deploy that need a YAML or JSON parser.

Run by scripts/check-deploy with its venv's Python (PyYAML, jsonschema);
each subcommand prints what it checked and exits 1 naming what is wrong.

  prometheusrule RULES OUT      write the PrometheusRule of RULES to OUT
  manifests RENDERED BUILTIN    check the custom resources of a rendered
                                overlay against k8s/schemas/, write the
                                built-in kinds to BUILTIN (for
                                kubernetes-validate)
  promql OUT FILE...            check the metric names of every query in the
                                rules files and dashboards FILE... against
                                deploy/metric-names.txt and write them to
                                OUT as recording rules (for promtool)
  dashboards-ts OUT FILE...     write a TypeScript module typing each
                                dashboard with @grafana/schema (for tsc)
"""

import json
import re
import sys
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "k8s" / "schemas"
CONTRACT = ROOT / "deploy" / "metric-names.txt"

# Grafana's variables, as Prometheus would see them once Grafana has filled
# them in.
GRAFANA_VARS = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "$service": ".*",
}

# Words of PromQL that look like metric names.
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "offset", "and", "or", "unless", "inf", "nan", "atan2",
}


def fail(msg):
    print(f"check_deploy: {msg}", file=sys.stderr)
    sys.exit(1)


def prometheusrule(rules_path, out_path):
    """The PrometheusRule whose spec is the rules file itself (its `groups`),
    so the two cannot drift: CI regenerates it and compares."""
    rules = Path(rules_path).resolve()
    body = rules.read_text()
    if not isinstance(yaml.safe_load(body).get("groups"), list):
        fail(f"{rules}: no `groups` list")
    header = (
        f"# GENERATED from {rules.relative_to(ROOT)} by `scripts/check-deploy --write`:\n"
        "# edit that file, not this one (CI fails when they differ).\n"
        "apiVersion: monitoring.coreos.com/v1\n"
        "kind: PrometheusRule\n"
        "metadata:\n"
        "  name: flowmeter\n"
        "  labels:\n"
        "    # the label a default Prometheus Operator install selects rules by;\n"
        "    # match your Prometheus's ruleSelector\n"
        "    release: prometheus\n"
        "spec:\n"
    )
    indented = "".join(
        f"  {line}" if line.strip() else line
        for line in body.splitlines(keepends=True)
        if not line.startswith("#")
    )
    Path(out_path).write_text(header + indented)


def crd_schemas():
    schemas = {}
    for p in sorted(SCHEMAS.glob("*.json")):
        s = json.loads(p.read_text())
        key = (s["x-api-version"], s["x-kind"])
        schemas[key] = (p, s)
    return schemas


def manifests(rendered, builtin_out):
    """Custom resources against our schemas of the fields we use (the CRDs'
    own schemas are not vendored); every other kind goes to BUILTIN_OUT."""
    docs = [d for d in yaml.safe_load_all(Path(rendered).read_text()) if d]
    schemas = crd_schemas()
    builtin, checked = [], []
    for d in docs:
        key = (d.get("apiVersion"), d.get("kind"))
        name = f"{key[1]}/{d.get('metadata', {}).get('name')}"
        if key in schemas:
            path, schema = schemas[key]
            errors = sorted(
                jsonschema.Draft202012Validator(schema).iter_errors(d),
                key=lambda e: list(e.absolute_path),
            )
            for e in errors:
                where = "/".join(str(p) for p in e.absolute_path)
                print(f"{rendered}: {name} at {where or '/'}: {e.message} ({path.name})", file=sys.stderr)
            if errors:
                sys.exit(1)
            checked.append(name)
        elif "." in key[0].split("/")[0] and not key[0].split("/")[0].endswith("k8s.io"):
            fail(f"{rendered}: {name}: custom resource {key[0]} with no schema in k8s/schemas/")
        else:
            builtin.append(d)
    with open(builtin_out, "w") as f:
        yaml.safe_dump_all(builtin, f, sort_keys=False)
    print(f"  custom resources checked against k8s/schemas: {', '.join(checked) or 'none'}")


def contract():
    names, histograms = set(), set()
    for line in CONTRACT.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, kind = line.split()
        names.add(name)
        if kind == "histogram":
            histograms.add(name)
            names.update(f"{name}_{s}" for s in ("bucket", "sum", "count"))
    return names


def metric_names(expr):
    """The metric names a PromQL expression selects: identifiers that are no
    function, keyword or label (label matchers, by/without/on lists, strings
    and durations removed first)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e
    )
    found = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        word = m.group(0)
        rest = e[m.end():].lstrip()
        before = e[: m.start()]
        if rest.startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        if re.search(r"[0-9.]$", before):  # 5m, 1e3
            continue
        found.add(word)
    return found


def queries(path):
    """(where, expr) of every query in a rules file or a dashboard."""
    p = Path(path)
    if p.suffix == ".json":
        board = json.loads(p.read_text())
        out = []

        def walk(panels):
            for panel in panels:
                for t in panel.get("targets", []):
                    if "expr" in t:
                        out.append((f"{p.name}: panel {panel.get('title')!r}", t["expr"]))
                walk(panel.get("panels", []))

        walk(board.get("panels", []))
        for v in board.get("templating", {}).get("list", []):
            q = v.get("query")
            if isinstance(q, dict):
                q = q.get("query")
            if v.get("type") == "query" and isinstance(q, str):
                m = re.fullmatch(r"label_values\((.+),\s*\w+\)", q)
                if not m:
                    fail(f"{p.name}: variable {v['name']}: only label_values(SELECTOR, LABEL) is checked, got {q!r}")
                out.append((f"{p.name}: variable {v['name']}", m.group(1)))
        return out
    if p.name.endswith(".values.yaml"):  # prometheus-adapter rules
        values = yaml.safe_load(p.read_text())
        out = []
        for r in values["rules"]["external"]:
            q = r["metricsQuery"].replace("<<.Series>>", r["seriesQuery"].split("{")[0])
            q = q.replace("{<<.LabelMatchers>>}", '{group="rollup"}')
            out.append((f"{p.name}: {r['name']['as']}", q))
            out.append((f"{p.name}: seriesQuery", r["seriesQuery"]))
        return out
    rules = yaml.safe_load(p.read_text())
    return [
        (f"{p.name}: {r.get('alert') or r.get('record')}", r["expr"])
        for g in rules["groups"]
        for r in g["rules"]
    ]


def promql(out_path, files):
    allowed = contract()
    rules, bad = [], []
    for f in files:
        for i, (where, expr) in enumerate(queries(f)):
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            if "$" in expr:
                bad.append(f"{where}: a Grafana variable check_deploy.py does not know: {expr}")
            for name in sorted(metric_names(expr) - allowed):
                bad.append(f"{where}: metric {name} is not in deploy/metric-names.txt")
            stem = re.sub(r"\W", "_", Path(f).stem)
            rules.append({"record": f"check:{stem}:{i}", "expr": expr})
    if bad:
        fail("\n  ".join(["queries using unknown names:"] + bad))
    with open(out_path, "w") as f:
        yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}, f, sort_keys=False)
    print(f"  {len(rules)} queries use only names of deploy/metric-names.txt")


# Grafana's generated types use TypeScript enums for option values; JSON
# holds their string values. Json<T> maps each string enum to the union of
# its values, recursively, so a literal is checked against them.
TS_PRELUDE = """\
// GENERATED by scripts/check_deploy.py dashboards-ts: the dashboards typed
// with Grafana's own schema types (@grafana/schema), checked by tsc.
import type { Dashboard } from '@grafana/schema/dist/esm/raw/dashboard/x/Dashboard_types.gen';
import type {
  Options as TimeseriesOptions,
  FieldConfig as TimeseriesFieldConfig,
} from '@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen';
import type { Options as StatOptions } from '@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen';

type Json<T> = T extends string
  ? `${T}`
  : T extends (infer U)[]
    ? Json<U>[]
    : T extends object
      ? { [K in keyof T]: Json<T[K]> }
      : T;

"""

PANEL_TYPES = {
    "timeseries": ("TimeseriesOptions", "TimeseriesFieldConfig"),
    "stat": ("StatOptions", None),
}


def dashboards_ts(out_path, files):
    parts = [TS_PRELUDE]
    for f in files:
        p = Path(f)
        board = json.loads(p.read_text())
        ident = re.sub(r"\W", "_", p.stem)
        parts.append(f"export const {ident}: Json<Dashboard> = {json.dumps(board, indent=2)};\n\n")
        panels = [q for panel in board.get("panels", []) for q in [panel, *panel.get("panels", [])]]
        for panel in panels:
            kind = panel["type"]
            if kind == "row":
                continue
            if kind not in PANEL_TYPES:
                fail(f"{p.name}: panel {panel.get('title')!r} of type {kind}: add its option types to check_deploy.py")
            options, custom = PANEL_TYPES[kind]
            pid = f"{ident}_{panel['id']}"
            # Partial: the schema's options have defaults in Grafana
            parts.append(f"export const {pid}_options: Partial<Json<{options}>> = {json.dumps(panel.get('options', {}))};\n")
            c = panel.get("fieldConfig", {}).get("defaults", {}).get("custom")
            if c is not None:
                if custom is None:
                    fail(f"{p.name}: panel {panel.get('title')!r}: custom field config on a {kind} panel")
                parts.append(f"export const {pid}_custom: Partial<Json<{custom}>> = {json.dumps(c)};\n")
    Path(out_path).write_text("".join(parts))
    print(f"  {len(files)} dashboards written for tsc")


def main(argv):
    if len(argv) < 3:
        fail(__doc__)
    cmd, rest = argv[1], argv[2:]
    if cmd == "prometheusrule" and len(rest) == 2:
        prometheusrule(*rest)
    elif cmd == "manifests" and len(rest) == 2:
        manifests(*rest)
    elif cmd == "promql" and len(rest) >= 2:
        promql(rest[0], rest[1:])
    elif cmd == "dashboards-ts" and len(rest) >= 2:
        dashboards_ts(rest[0], rest[1:])
    else:
        fail(__doc__)


if __name__ == "__main__":
    main(sys.argv)
