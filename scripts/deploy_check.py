#!/usr/bin/env python3
"""Offline checks for rollq's deployment files, driven by scripts/check-deploy.sh.

Each subcommand prints what it checked and exits non-zero with one line per problem, so every
check can be shown to fail on a broken copy (check-deploy.sh --self-test does exactly that).

Subcommands:
  kustomizations DIR...              kustomization.yaml uses only keys kustomize v2.0.3 knows
  split BUILT CORE_OUT               write the objects Kubernetes' own schemas cover to CORE_OUT;
                                     fail on a kind that neither they nor our CRDs cover
  crds --schemas DIR BUILT...        KEDA / Prometheus Operator objects against their CRD schema
  manifests --help-text F BUILT      cross-checks inside one built variant (env vars, KEDA vs
                                     ConfigMap, drain vs grace period, memory arithmetic, ...)
  metrics --scrape F --allow F --rules PR --dashboard D
                                     every metric in rules and dashboard exists somewhere known
  rules-extract PR OUT               the PrometheusRule's groups as a plain Prometheus rules file
  dashboard-configmap JSON OUT [--write]
                                     the dashboard ConfigMap is the JSON file, byte for byte
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import jsonschema
import yaml

# --- shared helpers ----------------------------------------------------------------------------

CRD_GROUPS = ("keda.sh", "monitoring.coreos.com")

# Workload containers whose env vars must be ones `rollq worker` accepts.
ROLLQ_CONTAINER = "rollq"

# Set by the AKS workload-identity webhook, not by us; listed so a manifest may name them.
WEBHOOK_ENV = {
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
}

# Memory arithmetic, see deploy/base/deployment.yaml. Update together with the worker's docs.
MIB = 1024 * 1024
PER_MESSAGE_BYTES = 40 * MIB
BASELINE_BYTES = 64 * MIB

# Gauges describing the shared queue; every replica exports the same value.
QUEUE_GAUGES = ("rollq_queue_messages", "rollq_poison_queue_messages", "rollq_oldest_message_age_seconds")

AZURE_QUEUE_KEYS = {
    "queueName",
    "queueLength",
    "activationQueueLength",
    "queueLengthStrategy",
    "connection",
    "connectionFromEnv",
    "accountName",
    "cloud",
    "endpointSuffix",
}


class Problems:
    """Collects problems; `finish` prints them and turns them into the exit code."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.items: list[str] = []

    def add(self, msg: str) -> None:
        self.items.append(msg)

    def check(self, cond: bool, msg: str) -> None:
        if not cond:
            self.add(msg)

    def finish(self, ok_msg: str) -> int:
        if self.items:
            for p in self.items:
                print(f"FAIL [{self.what}] {p}", file=sys.stderr)
            return 1
        print(f"ok   [{self.what}] {ok_msg}")
        return 0


def load_all(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def ident(obj: dict) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def parse_duration(text: str) -> float:
    """Seconds in a humantime-style duration such as `25s`, `5m`, `1h30m`, `500ms`."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)", text.strip())
    if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s+", "", text.strip()):
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


def parse_quantity(text: str) -> int:
    """Bytes in a Kubernetes memory quantity (`256Mi`, `1Gi`, `300M`, `1048576`)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i?|k)?", str(text).strip())
    if not m:
        raise ValueError(f"not a memory quantity: {text!r}")
    mult = {
        None: 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
        "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
    }[m.group(2)]
    return int(float(m.group(1)) * mult)


# --- kustomizations ----------------------------------------------------------------------------

def cmd_kustomizations(args: argparse.Namespace) -> int:
    # kustomize v2.0.3 (kubectl 1.20) also knows `bases`, which is how it takes a directory;
    # anything else (patches, generators, components) would build only with a newer kustomize.
    allowed = {"resources", "bases", "images", "namespace"}
    pr = Problems("kustomize-v2.0.3-keys")
    files = []
    for d in args.dirs:
        for k in sorted(Path(d).rglob("kustomization.yaml")):
            files.append(k)
            doc = yaml.safe_load(k.read_text(encoding="utf-8")) or {}
            extra = set(doc) - allowed
            pr.check(not extra, f"{k}: keys {sorted(extra)} are not in {sorted(allowed)}")
            for r in doc.get("resources", []) or []:
                p = k.parent / r
                pr.check(p.is_file(), f"{k}: resource {r} must be a file below the directory")
    pr.check(bool(files), f"no kustomization.yaml under {args.dirs}")
    return pr.finish(f"{len(files)} kustomization.yaml files use only {sorted(allowed)}")


# --- split -------------------------------------------------------------------------------------

def cmd_split(args: argparse.Namespace) -> int:
    pr = Problems("split")
    core = []
    for obj in load_all(args.built):
        group = obj.get("apiVersion", "").split("/")[0] if "/" in obj.get("apiVersion", "") else ""
        if group in CRD_GROUPS:
            continue
        # Groups kubernetes-validate has schemas for; anything else would pass it with a mere
        # warning, so it is refused here.
        if group not in ("", "apps", "policy", "batch", "autoscaling", "networking.k8s.io",
                         "rbac.authorization.k8s.io"):
            pr.add(f"{ident(obj)}: apiVersion {obj.get('apiVersion')} has no schema here")
            continue
        core.append(obj)
    with open(args.core_out, "w", encoding="utf-8") as f:
        yaml.safe_dump_all(core, f, sort_keys=False)
    return pr.finish(f"{len(core)} core objects to validate against Kubernetes' schemas")


# --- CRD schemas -------------------------------------------------------------------------------

def crd_to_jsonschema(node: object) -> object:
    """Turns a CRD openAPIV3Schema into a JSON Schema that is as strict as the API server.

    - `x-kubernetes-int-or-string` → integer or string;
    - `nullable` → also null;
    - objects with `properties` and neither `additionalProperties` nor
      `x-kubernetes-preserve-unknown-fields` reject unknown fields: the API server would prune
      them silently, which is exactly the typo we want to catch;
    - `x-kubernetes-embedded-resource` also admits apiVersion/kind/metadata;
    - CEL rules (`x-kubernetes-validations`) and list-type hints are not evaluated.
    """
    if isinstance(node, list):
        return [crd_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: crd_to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    out.pop("nullable", None)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("x-kubernetes-embedded-resource"):
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
    if (
        out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def load_crd_schemas(schema_dir: Path) -> dict[tuple[str, str], dict]:
    schemas = {}
    for f in sorted(schema_dir.rglob("*.yaml")):
        for crd in load_all(f):
            if crd.get("kind") != "CustomResourceDefinition":
                continue
            group = crd["spec"]["group"]
            kind = crd["spec"]["names"]["kind"]
            for v in crd["spec"]["versions"]:
                schema = crd_to_jsonschema(v["schema"]["openAPIV3Schema"])
                # metadata is validated by the API server's ObjectMeta rules, not the CRD.
                schema.setdefault("properties", {})["metadata"] = {"type": "object"}
                schemas[(f"{group}/{v['name']}", kind)] = schema
    return schemas


def cmd_crds(args: argparse.Namespace) -> int:
    pr = Problems("crd-schemas")
    schemas = load_crd_schemas(Path(args.schemas))
    pr.check(bool(schemas), f"no CRD schemas under {args.schemas}")
    n = 0
    for built in args.built:
        for obj in load_all(built):
            api = obj.get("apiVersion", "")
            if api.split("/")[0] not in CRD_GROUPS:
                continue
            schema = schemas.get((api, obj.get("kind")))
            if schema is None:
                pr.add(f"{built}: {ident(obj)}: no CRD schema for {api} {obj.get('kind')}")
                continue
            n += 1
            v = jsonschema.Draft7Validator(schema)
            for err in sorted(v.iter_errors(obj), key=lambda e: list(e.absolute_path)):
                path = ".".join(str(p) for p in err.absolute_path) or "(root)"
                pr.add(f"{built}: {ident(obj)}: {path}: {err.message}")
            for trig in obj.get("spec", {}).get("triggers", []) or []:
                if trig.get("type") != "azure-queue":
                    continue
                md = trig.get("metadata", {})
                # The CRD types trigger metadata as map[string]string; KEDA checks the keys at
                # run time only, so a misspelt key would be silently ignored.
                unknown = set(md) - AZURE_QUEUE_KEYS
                pr.check(not unknown, f"{built}: {ident(obj)}: unknown azure-queue keys {sorted(unknown)}")
                pr.check(md.get("queueLengthStrategy") in ("all", "visibleonly"),
                         f"{built}: {ident(obj)}: queueLengthStrategy must be all|visibleonly")
                for key in ("queueLength", "activationQueueLength"):
                    pr.check(str(md.get(key, "0")).isdigit(),
                             f"{built}: {ident(obj)}: {key} must be a whole number")
    pr.check(n > 0, "no KEDA or Prometheus Operator objects found")
    return pr.finish(f"{n} custom resources valid against their CRD schemas")


# --- manifest cross-checks ---------------------------------------------------------------------

def accepted_env(help_text: str) -> set[str]:
    """Env var names clap prints in `rollq worker --help` as `[env: NAME=...]` or `[env: NAME]`."""
    # `[env: NAME]` without `=` is how clap prints it with hide_env_values (secrets).
    return set(re.findall(r"\[env:\s*([A-Za-z_][A-Za-z0-9_]*)[=\]]", help_text))


def help_blocks(help_text: str) -> list[str]:
    """One text block per option in clap's help (an option's description may wrap)."""
    blocks: list[str] = []
    for line in help_text.splitlines():
        if re.match(r"\s*(-\w, )?--[\w-]+", line):
            blocks.append(line)
        elif blocks and line.strip():
            blocks[-1] += " " + line.strip()
    return blocks


def possible_values(help_text: str) -> dict[str, set[str]]:
    """Env var → the values clap lists for that option.

    clap prints them inline as `[possible values: a, b]` (short help, or values without
    descriptions) or, in long help for documented values, as a `Possible values:` list of
    `- name: description` items; both forms are read.
    """
    out = {}
    for block in help_blocks(help_text):
        env = re.search(r"\[env:\s*([A-Za-z_][A-Za-z0-9_]*)[=\]]", block)
        if not env:
            continue
        inline = re.search(r"\[possible values: ([^\]]*)\]", block)
        listed = re.search(r"Possible values:(.*?)(\[env:|\[default:|$)", block)
        if inline:
            out[env.group(1)] = {v.strip() for v in inline.group(1).split(",")}
        elif listed:
            names = re.findall(r"(?:^|\s)- ([\w.-]+):", listed.group(1))
            if names:
                out[env.group(1)] = set(names)
    return out


def accepted_flags(help_text: str) -> set[str]:
    return {m.group(1) for b in help_blocks(help_text) for m in [re.search(r"(--[\w-]+)", b)] if m}


def pod_template(obj: dict) -> dict | None:
    if obj["kind"] == "Deployment":
        return obj["spec"]["template"]
    if obj["kind"] == "ScaledJob":
        return obj["spec"]["jobTargetRef"]["template"]
    return None


def cmd_manifests(args: argparse.Namespace) -> int:
    pr = Problems(f"manifests {Path(args.built).name}")
    objs = load_all(args.built)
    by_kind: dict[str, dict[str, dict]] = {}
    for o in objs:
        by_kind.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
    help_text = Path(args.help_text).read_text(encoding="utf-8")
    accepted = accepted_env(help_text)
    choices = possible_values(help_text)
    flags = accepted_flags(help_text)
    pr.check(len(accepted) >= 5, f"{args.help_text}: found only {sorted(accepted)} [env: ...] entries")

    workloads = [o for o in objs if pod_template(o) is not None
                 and any(c["name"] == ROLLQ_CONTAINER
                         for c in pod_template(o)["spec"]["containers"])]
    pr.check(bool(workloads), "no rollq Deployment or ScaledJob in this variant")
    checked_env = 0

    for w in workloads:
        wid = ident(w)
        tmpl = pod_template(w)
        spec = tmpl["spec"]
        labels = tmpl.get("metadata", {}).get("labels", {})
        if w["kind"] == "Deployment":
            pr.check("replicas" not in w["spec"], f"{wid}: has spec.replicas (KEDA owns it)")
            strat = w["spec"].get("strategy", {})
            pr.check(strat.get("type") == "RollingUpdate", f"{wid}: strategy must be RollingUpdate")
        psc = spec.get("securityContext", {})
        pr.check(psc.get("runAsNonRoot") is True, f"{wid}: pod runAsNonRoot must be true")
        pr.check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
                 f"{wid}: seccompProfile must be RuntimeDefault")
        sa_name = spec.get("serviceAccountName")
        sa = by_kind.get("ServiceAccount", {}).get(sa_name)
        pr.check(sa is not None, f"{wid}: ServiceAccount {sa_name!r} is not in the variant")
        if sa and "azure.workload.identity/client-id" in sa["metadata"].get("annotations", {}):
            pr.check(labels.get("azure.workload.identity/use") == "true",
                     f"{wid}: pod label azure.workload.identity/use must be \"true\"")

        for c in spec["containers"]:
            if c["name"] != ROLLQ_CONTAINER:
                continue
            # The variant's `images` entry must have reached every rollq container, including the
            # ScaledJob's nested template (a kustomize that missed it would ship `image: rollq`).
            image = c.get("image", "")
            pr.check(image != "rollq" and re.search(r":[\w.-]+$|@sha256:", image) is not None,
                     f"{wid}: image {image!r} was not set by the variant's `images` (name:tag)")
            csc = c.get("securityContext", {})
            pr.check(csc.get("readOnlyRootFilesystem") is True, f"{wid}: readOnlyRootFilesystem")
            pr.check(csc.get("allowPrivilegeEscalation") is False, f"{wid}: allowPrivilegeEscalation")
            pr.check(csc.get("capabilities", {}).get("drop") == ["ALL"], f"{wid}: drop ALL capabilities")
            res = c.get("resources", {})
            for side in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    pr.check(r in res.get(side, {}), f"{wid}: resources.{side}.{r} missing")

            # Effective environment: envFrom sources as found in this variant, then env.
            env: dict[str, str | None] = {}
            for src in c.get("envFrom", []):
                if "configMapRef" in src:
                    ref = src["configMapRef"]
                    cm = by_kind.get("ConfigMap", {}).get(ref["name"])
                    if cm is None:
                        pr.check(ref.get("optional", False), f"{wid}: ConfigMap {ref['name']} missing")
                        continue
                    env.update(cm.get("data", {}))
                if "secretRef" in src:
                    ref = src["secretRef"]
                    sec = by_kind.get("Secret", {}).get(ref["name"])
                    if sec is None:
                        pr.check(ref.get("optional", False), f"{wid}: Secret {ref['name']} missing")
                        continue
                    env.update({k: None for k in {**sec.get("data", {}), **sec.get("stringData", {})}})
            for e in c.get("env", []):
                env[e["name"]] = e.get("value")
            for name in sorted(env):
                checked_env += 1
                pr.check(name in accepted or name in WEBHOOK_ENV,
                         f"{wid}: env {name} is not accepted by `rollq worker` (see --help)")
                allowed_values = choices.get(name)
                if allowed_values and env[name] is not None:
                    pr.check(env[name] in allowed_values,
                             f"{wid}: {name}={env[name]!r} is not one of {sorted(allowed_values)}")
            args = c.get("args", [])
            pr.check(args[:1] == ["worker"], f"{wid}: container args must start with `worker`")
            for a in args[1:]:
                if a.startswith("--"):
                    pr.check(a.split("=")[0] in flags, f"{wid}: `rollq worker` has no flag {a}")

            if w["kind"] == "Deployment":
                for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"),
                                    ("startupProbe", None)):
                    p = c.get(probe)
                    pr.check(p is not None, f"{wid}: {probe} missing")
                    if p and path:
                        pr.check(p.get("httpGet", {}).get("path") == path,
                                 f"{wid}: {probe} must GET {path}")

            # Drain: the grace period must outlast the worker's drain deadline.
            drain = parse_duration(env.get("ROLLQ_DRAIN_TIMEOUT") or "25s")
            grace = spec.get("terminationGracePeriodSeconds", 30)
            pr.check(grace > drain + 5,
                     f"{wid}: terminationGracePeriodSeconds {grace} must exceed the drain "
                     f"timeout {drain:g}s plus 5s to release leases")

            # Memory: baseline + in-flight × per-message must fit under the limit.
            in_flight = env.get("ROLLQ_MAX_IN_FLIGHT")
            pr.check(in_flight is not None and str(in_flight).isdigit(),
                     f"{wid}: ROLLQ_MAX_IN_FLIGHT must be set explicitly")
            mem = res.get("limits", {}).get("memory")
            if in_flight and str(in_flight).isdigit() and mem:
                need = BASELINE_BYTES + int(in_flight) * PER_MESSAGE_BYTES
                pr.check(parse_quantity(mem) >= need,
                         f"{wid}: memory limit {mem} < {need // MIB}Mi needed for "
                         f"{in_flight} in flight × {PER_MESSAGE_BYTES // MIB}Mi + "
                         f"{BASELINE_BYTES // MIB}Mi")

            # KEDA objects scaling this workload read the same queue/account.
            scalers = [o for o in objs if o["kind"] == "ScaledObject"
                       and o["spec"]["scaleTargetRef"]["name"] == w["metadata"]["name"]]
            if w["kind"] == "ScaledJob":
                scalers = [w]
            else:
                pr.check(len(scalers) == 1, f"{wid}: expected one ScaledObject targeting it")
            for so in scalers:
                sid = ident(so)
                for trig in so["spec"]["triggers"]:
                    md = trig["metadata"]
                    pr.check(md.get("queueName") == env.get("ROLLQ_QUEUE"),
                             f"{sid}: queueName {md.get('queueName')!r} != ROLLQ_QUEUE "
                             f"{env.get('ROLLQ_QUEUE')!r}")
                    if "accountName" in md or "AZURE_STORAGE_ACCOUNT" in env:
                        pr.check(md.get("accountName") == env.get("AZURE_STORAGE_ACCOUNT"),
                                 f"{sid}: accountName {md.get('accountName')!r} != "
                                 f"AZURE_STORAGE_ACCOUNT {env.get('AZURE_STORAGE_ACCOUNT')!r}")
                    pr.check("queueLengthStrategy" in md, f"{sid}: queueLengthStrategy not explicit")
                    want = "visibleonly" if so["kind"] == "ScaledJob" else "all"
                    pr.check(md.get("queueLengthStrategy") == want,
                             f"{sid}: queueLengthStrategy should be {want}")
                    if in_flight and str(in_flight).isdigit():
                        pr.check(md.get("queueLength") == str(in_flight),
                                 f"{sid}: queueLength {md.get('queueLength')!r} should equal "
                                 f"per-pod capacity ROLLQ_MAX_IN_FLIGHT {in_flight}")
                    auth = by_kind.get("TriggerAuthentication", {}).get(
                        trig.get("authenticationRef", {}).get("name"))
                    pr.check(auth is not None, f"{sid}: authenticationRef not in the variant")
                    if auth:
                        aspec = auth["spec"]
                        if aspec.get("podIdentity", {}).get("provider") == "azure-workload":
                            pr.check("accountName" in md, f"{sid}: azure-workload needs accountName")
                        for ref in aspec.get("secretTargetRef", []):
                            sec = by_kind.get("Secret", {}).get(ref["name"], {})
                            keys = {**sec.get("data", {}), **sec.get("stringData", {})}
                            pr.check(ref["key"] in keys,
                                     f"{sid}: TriggerAuthentication reads {ref['name']}/{ref['key']}, "
                                     "which the variant's Secret does not have")
                            pr.check(ref["key"] in env,
                                     f"{sid}: KEDA reads {ref['key']} but the worker does not")
                if so["kind"] == "ScaledObject":
                    pr.check(so["spec"].get("minReplicaCount") == 0, f"{sid}: minReplicaCount 0")
                    beh = so["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {})
                    pr.check("scaleDown" in beh.get("behavior", {}), f"{sid}: no scaleDown behaviour")

    # Selectors of the Service, PodMonitor and PDB must select the Deployment's pods.
    for d in by_kind.get("Deployment", {}).values():
        if d["metadata"]["name"] != "rollq":
            continue
        labels = d["spec"]["template"]["metadata"]["labels"]
        for kind, sel_of in (("Service", lambda o: o["spec"].get("selector", {})),
                             ("PodDisruptionBudget", lambda o: o["spec"]["selector"]["matchLabels"]),
                             ("PodMonitor", lambda o: o["spec"]["selector"]["matchLabels"])):
            for o in by_kind.get(kind, {}).values():
                if o["metadata"]["name"] not in ("rollq", "rollq-metrics"):
                    continue
                sel = sel_of(o)
                pr.check(all(labels.get(k) == v for k, v in sel.items()),
                         f"{ident(o)}: selector {sel} does not match Deployment/rollq pods")
                if kind == "PodMonitor":
                    ports = {p.get("name") for c in d["spec"]["template"]["spec"]["containers"]
                             for p in c.get("ports", [])}
                    for ep in o["spec"]["podMetricsEndpoints"]:
                        pr.check(ep.get("port") in ports, f"{ident(o)}: port {ep.get('port')} unknown")
    return pr.finish(f"{len(workloads)} workload(s), {checked_env} env vars accepted by rollq worker, "
                     "KEDA and ConfigMap agree")


# --- metric names ------------------------------------------------------------------------------

PROMQL_WORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
    "group_right", "inf", "nan", "atan2",
    # Aggregation operators, which may be followed by `by (...)` instead of `(`.
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
    "topk", "quantile", "limitk", "limit_ratio",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names used in a PromQL expression (a small lexer, good enough for our queries)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    s = re.sub(r"\$\{?\w+\}?", "", s)  # Grafana variables
    s = re.sub(r"\{[^}]*\}", "", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", "", s)  # ranges / subqueries
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", s)
    names = set()
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", s):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def scrape_names(text: str) -> set[str]:
    """Series names a scrape exports: every sample's name, plus the names a `# TYPE` line
    promises. A labelled counter family nobody has incremented yet (say storage errors on a
    healthy worker) has a TYPE line but no sample, and still is a metric the worker emits."""
    suffixes = {
        "counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"],
        "summary": ["_sum", "_count", ""], "info": ["_info"], "gauge": [""], "untyped": [""],
        "unknown": [""], "stateset": [""], "gaugehistogram": ["_bucket", "_gsum", "_gcount"],
    }
    names = set()
    for line in text.splitlines():
        line = line.strip()
        m = re.match(r"#\s*TYPE\s+([A-Za-z_:][A-Za-z0-9_:]*)\s+(\w+)", line)
        if m:
            base, typ = m.group(1), m.group(2)
            for suf in suffixes.get(typ, [""]):
                # OpenMetrics names the counter family without `_total`; the text format with it.
                names.add(base if base.endswith(suf) else base + suf)
            continue
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([A-Za-z_:][A-Za-z0-9_:]*)", line)
        if m:
            names.add(m.group(1))
    return names


def dashboard_exprs(dash: dict) -> list[tuple[str, str]]:
    out = []

    def walk(panels: list[dict]) -> None:
        for p in panels:
            for t in p.get("targets", []) or []:
                if t.get("expr"):
                    out.append((f"panel {p.get('title')!r}", t["expr"]))
            walk(p.get("panels", []) or [])

    walk(dash.get("panels", []))
    for var in dash.get("templating", {}).get("list", []):
        q = var.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if var.get("type") == "query" and q:
            # label_values(metric, label): only the metric is a series name.
            m = re.fullmatch(r"\s*label_values\(\s*([^,]+?)\s*,\s*\w+\s*\)\s*", q)
            out.append((f"variable {var.get('name')!r}", m.group(1) if m else q))
    return out


def cmd_metrics(args: argparse.Namespace) -> int:
    pr = Problems("metric-names")
    scraped = scrape_names(Path(args.scrape).read_text(encoding="utf-8"))
    pr.check(any(n.startswith("rollq_") for n in scraped), f"{args.scrape}: no rollq_* samples")
    allow = {ln.split("#")[0].strip() for ln in Path(args.allow).read_text(encoding="utf-8").splitlines()}
    allow.discard("")
    pr_obj = load_all(args.rules)[0]
    recorded = {r["record"] for g in pr_obj["spec"]["groups"] for r in g["rules"] if "record" in r}
    exprs = [(f"rule {r.get('record') or r.get('alert')}", r["expr"])
             for g in pr_obj["spec"]["groups"] for r in g["rules"]]
    exprs += dashboard_exprs(json.loads(Path(args.dashboard).read_text(encoding="utf-8")))
    used = set()
    for where, e in exprs:
        names = promql_metric_names(e)
        pr.check(bool(names), f"{where}: no metric name found in {e!r}")
        for n in names:
            used.add(n)
            if n.startswith("rollq_"):
                pr.check(n in scraped, f"{where}: {n} is not in the scrape {args.scrape}")
            elif ":" in n:
                pr.check(n in recorded, f"{where}: {n} is not recorded by the PrometheusRule")
            else:
                pr.check(n in allow, f"{where}: {n} is neither rollq's nor on the allow-list")
    # Every replica reports the same queue gauges: summing them would multiply the backlog by
    # the replica count, so they must be aggregated with max.
    for where, e in exprs:
        for gauge in QUEUE_GAUGES:
            for m in re.finditer(rf"\b{gauge}\b", e):
                wrapper = re.search(
                    r"(\w+)\s*(?:(?:by|without)\s*\([^)]*\)\s*)?\(\s*$", e[: m.start()])
                pr.check(wrapper is not None and wrapper.group(1) == "max",
                         f"{where}: {gauge} must be aggregated with max(...) in {e!r}")
    unused = allow - used
    pr.check(not unused, f"allow-list entries nothing uses: {sorted(unused)}")
    n_rollq = len([n for n in used if n.startswith("rollq_")])
    return pr.finish(f"{len(exprs)} queries, {n_rollq} rollq_* names found in the scrape, "
                     f"{len(used & allow)} external names on the allow-list")


# --- rules and dashboard files -----------------------------------------------------------------

def cmd_rules_extract(args: argparse.Namespace) -> int:
    obj = load_all(args.prometheusrule)[0]
    with open(args.out, "w", encoding="utf-8") as f:
        yaml.safe_dump({"groups": obj["spec"]["groups"]}, f, sort_keys=False)
    return 0


DASHBOARD_HEADER = """\
# Generated from deploy/dashboards/rollq.json by
#   python3 scripts/deploy_check.py dashboard-configmap deploy/dashboards/rollq.json \\
#     deploy/base/grafana-dashboard.yaml --write
# (scripts/check-deploy.sh fails when the two differ). The grafana_dashboard label is what the
# Grafana sidecar of kube-prometheus-stack / the grafana chart watches for.
"""


def render_dashboard_configmap(dashboard_json: str) -> str:
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "rollq-grafana-dashboard",
            "labels": {"app.kubernetes.io/name": "rollq", "grafana_dashboard": "1"},
            "annotations": {"grafana_folder": "rollq"},
        },
        "data": {"rollq.json": dashboard_json},
    }

    class Literal(str):
        pass

    def literal(dumper: yaml.Dumper, data: str) -> yaml.Node:
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")

    yaml.add_representer(Literal, literal)
    cm["data"]["rollq.json"] = Literal(dashboard_json)
    return DASHBOARD_HEADER + yaml.dump(cm, sort_keys=False, allow_unicode=True, width=4096)


def cmd_dashboard_configmap(args: argparse.Namespace) -> int:
    pr = Problems("dashboard-configmap")
    text = Path(args.json).read_text(encoding="utf-8")
    json.loads(text)  # must be valid JSON
    want = render_dashboard_configmap(text)
    out = Path(args.out)
    if args.write:
        out.write_text(want, encoding="utf-8")
        print(f"wrote {out}")
        return 0
    have = out.read_text(encoding="utf-8") if out.exists() else ""
    pr.check(have == want, f"{out} is out of date with {args.json}: re-run with --write")
    if have:
        embedded = yaml.safe_load(have)["data"]["rollq.json"]
        pr.check(json.loads(embedded) == json.loads(text), f"{out} embeds a different dashboard")
    return pr.finish(f"{out} embeds {args.json}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("kustomizations")
    p.add_argument("dirs", nargs="+")
    p.set_defaults(fn=cmd_kustomizations)
    p = sub.add_parser("split")
    p.add_argument("built")
    p.add_argument("core_out")
    p.set_defaults(fn=cmd_split)
    p = sub.add_parser("crds")
    p.add_argument("--schemas", required=True)
    p.add_argument("built", nargs="+")
    p.set_defaults(fn=cmd_crds)
    p = sub.add_parser("manifests")
    p.add_argument("--help-text", required=True)
    p.add_argument("built")
    p.set_defaults(fn=cmd_manifests)
    p = sub.add_parser("metrics")
    p.add_argument("--scrape", required=True)
    p.add_argument("--allow", required=True)
    p.add_argument("--rules", required=True)
    p.add_argument("--dashboard", required=True)
    p.set_defaults(fn=cmd_metrics)
    p = sub.add_parser("rules-extract")
    p.add_argument("prometheusrule")
    p.add_argument("out")
    p.set_defaults(fn=cmd_rules_extract)
    p = sub.add_parser("dashboard-configmap")
    p.add_argument("json")
    p.add_argument("out")
    p.add_argument("--write", action="store_true")
    p.set_defaults(fn=cmd_dashboard_configmap)
    args = ap.parse_args()
    try:
        return args.fn(args)
    except (KeyError, TypeError, ValueError, yaml.YAMLError, json.JSONDecodeError) as e:
        print(f"FAIL [{args.cmd}] malformed input: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
