#!/usr/bin/env python3
"""Offline checks for rollq's deployment files, driven by scripts/check-deploy.sh.

Each subcommand prints what it checked and exits non-zero with one line per problem, so every
check can be shown to fail on a broken copy (check-deploy.sh --self-test does exactly that).

Subcommands:
  split BUILT CORE_OUT               write the objects Kubernetes' own schemas cover to CORE_OUT;
                                     fail on a kind that neither they nor our CRDs cover
  crds --schemas DIR BUILT...        KEDA / Prometheus Operator objects against their CRD schema
  manifests --help-text F BUILT      cross-checks inside one built variant (env vars, KEDA vs
                                     ConfigMap, drain vs grace period, memory arithmetic, ...)
  cluster --params ENV BUILT         what schemas cannot see but a cluster would: parameters
                                     reached every object, ConfigMap/Secret references resolve,
                                     Pod Security restricted, KEDA strategy pairs and rollout,
                                     PDB eviction policy, endpoint hosts, labels, ingress policy
  alerts --runbook MD BUILT          alert annotations (summary, description, runbook_url into
                                     a section of the runbook), recording rule names
  metrics --scrape F --allow F --rules PR --dashboard D
                                     every metric in rules and dashboard exists somewhere known
  rules-extract PR OUT               the PrometheusRule's groups as a plain Prometheus rules file
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

# Memory arithmetic, see docs/deploy.md ("Sizing and the KEDA arithmetic"). The worker's
# jobs reserve from ROLLQ_MEMORY_BUDGET; the limit must hold the budget plus the baseline, and
# the budget must hold one job's full reservation (else big inputs run alone, one at a time).
MIB = 1024 * 1024
BASELINE_BYTES = 64 * MIB
HELD_CELL_BYTES = 48  # src/worker/budget.rs HELD_CELL_BYTES
# The worker's defaults for the settings a reservation is made of (rollq worker --help).
RESERVATION_DEFAULTS = {
    "ROLLQ_DOWNLOAD_BLOCK_SIZE": "4MiB",
    "ROLLQ_DOWNLOAD_PARALLEL": "2",
    "ROLLQ_UPLOAD_BLOCK_SIZE": "4MiB",
    "ROLLQ_MAX_HELD_CELLS": "1000000",
}
# The worker's --prefetch default (rollq worker --help): counted when a variant leaves it unset.
PREFETCH_DEFAULT = "32"


def parse_size(text: str) -> int:
    """`4MiB`, `384Mi`, `1048576`: the forms `rollq worker` accepts (binary units)."""
    m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", text)
    if not m:
        raise ValueError(f"not a size: {text!r}")
    unit = m.group(2).lower().rstrip("b").rstrip("i")
    return int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit]


def job_reservation(env: dict) -> int:
    """The most one job reserves (src/worker/budget.rs Need::before_size)."""
    get = lambda k: env.get(k) or RESERVATION_DEFAULTS[k]
    download = 2 * int(get("ROLLQ_DOWNLOAD_PARALLEL")) * parse_size(get("ROLLQ_DOWNLOAD_BLOCK_SIZE"))
    output = 2 * parse_size(get("ROLLQ_UPLOAD_BLOCK_SIZE"))
    held = int(get("ROLLQ_MAX_HELD_CELLS")) * HELD_CELL_BYTES
    return download + output + held


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
            # The worker exits within --drain-timeout + 10 s (releases and the last waits are
            # bounded by then), so the kubelet must not SIGKILL it sooner.
            pr.check(grace >= drain + 10,
                     f"{wid}: terminationGracePeriodSeconds {grace} must be at least the drain "
                     f"timeout {drain:g}s plus 10s to release leases")

            # Memory: the budget plus the baseline must fit under the limit, and the budget must
            # hold one job's full reservation.
            in_flight = env.get("ROLLQ_MAX_IN_FLIGHT")
            pr.check(in_flight is not None and str(in_flight).isdigit(),
                     f"{wid}: ROLLQ_MAX_IN_FLIGHT must be set explicitly")
            budget = env.get("ROLLQ_MEMORY_BUDGET")
            pr.check(budget is not None,
                     f"{wid}: ROLLQ_MEMORY_BUDGET must be set explicitly (the default is a "
                     "fraction of the limit, which this check cannot see being applied)")
            mem = res.get("limits", {}).get("memory")
            if budget and mem:
                need = BASELINE_BYTES + parse_size(budget)
                pr.check(parse_quantity(mem) >= need,
                         f"{wid}: memory limit {mem} < {need // MIB}Mi needed for the "
                         f"{budget} budget + {BASELINE_BYTES // MIB}Mi baseline")
                one = job_reservation(env)
                pr.check(parse_size(budget) >= one,
                         f"{wid}: ROLLQ_MEMORY_BUDGET {budget} < one job's reservation "
                         f"{one // MIB}Mi: big inputs would run alone")

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
                    if so["kind"] == "ScaledObject":
                        pr.check(md.get("queueLengthStrategy") == "all",
                                 f"{sid}: queueLengthStrategy should be all (leased messages keep "
                                 "their pods)")
                    else:
                        check_scaledjob_strategy(pr, so, md)
                    # Unset, the worker prefetches its default (`rollq worker --help`).
                    prefetch = env.get("ROLLQ_PREFETCH") or PREFETCH_DEFAULT
                    if in_flight and str(in_flight).isdigit() and str(prefetch).isdigit():
                        held = int(in_flight) + int(prefetch)
                        pr.check(md.get("queueLength") == str(held),
                                 f"{sid}: queueLength {md.get('queueLength')!r} should equal "
                                 f"what one pod holds: ROLLQ_MAX_IN_FLIGHT {in_flight} + "
                                 f"ROLLQ_PREFETCH {prefetch}")
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


# --- ScaledJob arithmetic ----------------------------------------------------------------------

# KEDA's ScaledJob strategies and the queue count each one assumes (keda/scaledjob/scaledjob.yaml
# has the arithmetic): `default` subtracts running Jobs, so the count must include their leased
# messages (`all`); `accurate` subtracts only pending Jobs, so the count must exclude them
# (`visibleonly`). The other pairs under- or over-scale.
SCALEDJOB_PAIRS = {("all", "default"), ("visibleonly", "accurate")}
# Above this many visible messages the azure-queue scaler's `visibleonly` falls back to the
# approximate count (leased and delayed messages included); a cap at or below it keeps
# `accurate` exact in that regime.
AZURE_QUEUE_MAX_PEEK = 32


def check_scaledjob_strategy(pr: Problems, sj: dict, md: dict) -> None:
    sid = ident(sj)
    qls = md.get("queueLengthStrategy", "all")
    strategy = sj["spec"].get("scalingStrategy", {}).get("strategy", "default")
    pr.check((qls, strategy) in SCALEDJOB_PAIRS,
             f"{sid}: queueLengthStrategy {qls} with scalingStrategy {strategy} miscounts leased "
             f"messages; use one of {sorted(SCALEDJOB_PAIRS)}")
    if qls == "visibleonly":
        cap = sj["spec"].get("maxReplicaCount", 100)
        pr.check(cap <= AZURE_QUEUE_MAX_PEEK,
                 f"{sid}: maxReplicaCount {cap} > {AZURE_QUEUE_MAX_PEEK}: above 32 visible messages "
                 "visibleonly counts leased ones too and would start spare Jobs")


# --- what a cluster would see ------------------------------------------------------------------

# Volume types Pod Security `restricted` allows.
PSS_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
               "projected", "secret"}
PLACEHOLDER = "set-by-params"


def read_params(path: str) -> dict[str, str]:
    out = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


def pod_templates(objs: list[dict]) -> list[tuple[str, dict]]:
    out = []
    for o in objs:
        spec = o.get("spec", {})
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
            out.append((ident(o), spec["template"]))
        elif o["kind"] == "ScaledJob":
            out.append((ident(o), spec["jobTargetRef"]["template"]))
        elif o["kind"] == "CronJob":
            out.append((ident(o), spec["jobTemplate"]["spec"]["template"]))
        elif o["kind"] == "Pod":
            out.append((ident(o), o))
    return out


def check_pod_security(pr: Problems, where: str, tmpl: dict) -> None:
    """Pod Security Standards, `restricted` profile (baseline included), as the namespace
    label enforces them at admission."""
    spec = tmpl["spec"]
    psc = spec.get("securityContext", {})
    for f in ("hostNetwork", "hostPID", "hostIPC"):
        pr.check(not spec.get(f), f"{where}: {f} is not allowed (restricted)")
    for v in spec.get("volumes", []) or []:
        kinds = set(v) - {"name"}
        pr.check(kinds <= PSS_VOLUMES, f"{where}: volume {v.get('name')} type {sorted(kinds)} not allowed")
    containers = (spec.get("containers", []) or []) + (spec.get("initContainers", []) or [])
    for c in containers:
        cw = f"{where} container {c.get('name')}"
        csc = c.get("securityContext", {})
        pr.check(not csc.get("privileged"), f"{cw}: privileged")
        pr.check(csc.get("allowPrivilegeEscalation") is False, f"{cw}: allowPrivilegeEscalation must be false")
        caps = csc.get("capabilities", {})
        pr.check("ALL" in (caps.get("drop") or []), f"{cw}: capabilities.drop must include ALL")
        pr.check(set(caps.get("add") or []) <= {"NET_BIND_SERVICE"}, f"{cw}: adds capabilities {caps.get('add')}")
        non_root = csc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        pr.check(non_root is True, f"{cw}: runAsNonRoot must be true (pod or container)")
        pr.check(csc.get("runAsUser", psc.get("runAsUser")) != 0, f"{cw}: runAsUser 0")
        sec = csc.get("seccompProfile", psc.get("seccompProfile", {})) or {}
        pr.check(sec.get("type") in ("RuntimeDefault", "Localhost"),
                 f"{cw}: seccompProfile must be RuntimeDefault or Localhost (pod or container)")
        for port in c.get("ports", []) or []:
            pr.check("hostPort" not in port, f"{cw}: hostPort")


def check_references(pr: Problems, where: str, tmpl: dict, cms: dict, secrets: dict) -> int:
    """Every ConfigMap and Secret a pod names exists in the variant (with the key it reads),
    unless the reference is optional. Returns the number of references checked."""
    n = 0

    def need(kind: str, name: str, key: str | None, optional: bool) -> None:
        nonlocal n
        n += 1
        pool = cms if kind == "ConfigMap" else secrets
        obj = pool.get(name)
        if obj is None:
            pr.check(bool(optional), f"{where}: {kind} {name!r} does not exist in the variant")
            return
        if key is not None:
            keys = {**obj.get("data", {}), **obj.get("stringData", {}), **obj.get("binaryData", {})}
            pr.check(key in keys or bool(optional), f"{where}: {kind} {name!r} has no key {key!r}")

    spec = tmpl["spec"]
    for c in (spec.get("containers", []) or []) + (spec.get("initContainers", []) or []):
        for src in c.get("envFrom", []) or []:
            for field, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                if field in src:
                    need(kind, src[field]["name"], None, src[field].get("optional", False))
        for e in c.get("env", []) or []:
            vf = e.get("valueFrom", {})
            for field, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                if field in vf:
                    need(kind, vf[field]["name"], vf[field].get("key"), vf[field].get("optional", False))
    for v in spec.get("volumes", []) or []:
        if "configMap" in v:
            need("ConfigMap", v["configMap"]["name"], None, v["configMap"].get("optional", False))
        if "secret" in v:
            need("Secret", v["secret"]["secretName"], None, v["secret"].get("optional", False))
        for s in (v.get("projected", {}) or {}).get("sources", []) or []:
            if "configMap" in s:
                need("ConfigMap", s["configMap"]["name"], None, s["configMap"].get("optional", False))
            if "secret" in s:
                need("Secret", s["secret"]["name"], None, s["secret"].get("optional", False))
    for ps in spec.get("imagePullSecrets", []) or []:
        need("Secret", ps["name"], None, False)
    return n


def cmd_cluster(args: argparse.Namespace) -> int:
    pr = Problems(f"cluster {Path(args.built).name}")
    params = read_params(args.params)
    text = Path(args.built).read_text(encoding="utf-8")
    objs = load_all(args.built)
    by_kind: dict[str, dict[str, dict]] = {}
    for o in objs:
        by_kind.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
    cms, secrets = by_kind.get("ConfigMap", {}), by_kind.get("Secret", {})

    # Parameters reached every object (kustomize leaves a target alone when it has no field).
    pr.check(PLACEHOLDER not in text, f"{PLACEHOLDER!r} left in the build: a replacement missed it")
    ns = params.get("NAMESPACE")
    nss = list(by_kind.get("Namespace", {}))
    pr.check(nss == [ns], f"Namespace objects {nss}, expected exactly [{ns!r}]")
    for o in objs:
        if o["kind"] != "Namespace":
            pr.check(o["metadata"].get("namespace") == ns,
                     f"{ident(o)}: namespace {o['metadata'].get('namespace')!r} != NAMESPACE {ns!r}")
        labels = o["metadata"].get("labels", {})
        pr.check("app.kubernetes.io/name" in labels, f"{ident(o)}: no app.kubernetes.io/name label")
        pr.check(labels.get("app.kubernetes.io/part-of") == "rollq",
                 f"{ident(o)}: label app.kubernetes.io/part-of must be rollq")
        pr.check(labels.get("app.kubernetes.io/managed-by") == "kustomize",
                 f"{ident(o)}: label app.kubernetes.io/managed-by must be kustomize")
    for n in by_kind.get("Namespace", {}).values():
        lab = n["metadata"].get("labels", {})
        for mode in ("enforce", "warn", "audit"):
            pr.check(lab.get(f"pod-security.kubernetes.io/{mode}") == "restricted",
                     f"{ident(n)}: pod-security.kubernetes.io/{mode} must be restricted")

    config = [c for name, c in cms.items() if name.startswith("rollq-config")]
    pr.check(len(config) == 1, f"expected one rollq-config ConfigMap, found {[ident(c) for c in config]}")
    for c in config:
        # A generated name (rollq-config-<hash>) changes with the content, so an edit rolls pods.
        pr.check(re.fullmatch(r"rollq-config-[a-z0-9]{10}", c["metadata"]["name"]) is not None,
                 f"{ident(c)}: not a generated (content-hashed) name; a settings change would not roll pods")
        data = c.get("data", {})
        for key, param in (("ROLLQ_QUEUE", "QUEUE"), ("ROLLQ_CONTAINER", "INPUT_CONTAINER"),
                           ("ROLLQ_ALLOWED_CONTAINERS", "INPUT_CONTAINER"),
                           ("ROLLQ_OUTPUT_CONTAINER", "OUTPUT_CONTAINER"),
                           ("AZURE_STORAGE_ACCOUNT", "STORAGE_ACCOUNT")):
            if param in params:
                pr.check(data.get(key) == params[param],
                         f"{ident(c)}: {key} {data.get(key)!r} != {param} {params[param]!r}")
    for kind in ("ScaledObject", "ScaledJob"):
        for so in by_kind.get(kind, {}).values():
            for t in so["spec"]["triggers"]:
                md = t.get("metadata", {})
                pr.check(md.get("queueName") == params.get("QUEUE"),
                         f"{ident(so)}: queueName {md.get('queueName')!r} != QUEUE")
                if "STORAGE_ACCOUNT" in params:
                    pr.check(md.get("accountName") == params["STORAGE_ACCOUNT"],
                             f"{ident(so)}: accountName {md.get('accountName')!r} != STORAGE_ACCOUNT")
    if "WORKER_CLIENT_ID" in params:
        sa = by_kind.get("ServiceAccount", {}).get("rollq", {})
        got = sa.get("metadata", {}).get("annotations", {}).get("azure.workload.identity/client-id")
        pr.check(got == params["WORKER_CLIENT_ID"], f"ServiceAccount/rollq client-id {got!r} != WORKER_CLIENT_ID")
    if "KEDA_CLIENT_ID" in params:
        for ta in by_kind.get("TriggerAuthentication", {}).values():
            got = ta["spec"].get("podIdentity", {}).get("identityId")
            pr.check(got == params["KEDA_CLIENT_ID"], f"{ident(ta)}: identityId {got!r} != KEDA_CLIENT_ID")

    # Pods: the image, Pod Security restricted, and every ConfigMap/Secret they name.
    n_refs = 0
    templates = pod_templates(objs)
    for where, tmpl in templates:
        check_pod_security(pr, where, tmpl)
        n_refs += check_references(pr, where, tmpl, cms, secrets)
        pr.check("app.kubernetes.io/name" in tmpl.get("metadata", {}).get("labels", {}),
                 f"{where}: pod template has no app.kubernetes.io/name label")
        for c in tmpl["spec"]["containers"]:
            if c["name"] == ROLLQ_CONTAINER:
                pr.check(c.get("image") == params.get("IMAGE"),
                         f"{where}: image {c.get('image')!r} != IMAGE {params.get('IMAGE')!r}")
    for ta in by_kind.get("TriggerAuthentication", {}).values():
        for ref in ta["spec"].get("secretTargetRef", []) or []:
            n_refs += 1
            sec = secrets.get(ref["name"])
            pr.check(sec is not None, f"{ident(ta)}: Secret {ref['name']!r} does not exist in the variant")
            if sec is not None:
                keys = {**sec.get("data", {}), **sec.get("stringData", {})}
                pr.check(ref["key"] in keys, f"{ident(ta)}: Secret {ref['name']!r} has no key {ref['key']!r}")

    # KEDA: Jobs survive a ScaledJob update and the autoscaler; the ScaledObject has a fallback.
    for sj in by_kind.get("ScaledJob", {}).values():
        pr.check(sj["spec"].get("rollout", {}).get("strategy") == "gradual",
                 f"{ident(sj)}: rollout.strategy must be gradual (immediate deletes running Jobs)")
        ann = sj["spec"]["jobTargetRef"]["template"].get("metadata", {}).get("annotations", {})
        pr.check(ann.get("cluster-autoscaler.kubernetes.io/safe-to-evict") == "false",
                 f"{ident(sj)}: Job pods need cluster-autoscaler.kubernetes.io/safe-to-evict: \"false\"")
    for so in by_kind.get("ScaledObject", {}).values():
        fb = so["spec"].get("fallback", {})
        pr.check(fb.get("failureThreshold", 0) >= 1 and fb.get("replicas", 0) >= 1,
                 f"{ident(so)}: needs a fallback (failureThreshold and replicas >= 1)")
    for pdb in by_kind.get("PodDisruptionBudget", {}).values():
        pr.check(pdb["spec"].get("unhealthyPodEvictionPolicy") == "AlwaysAllow",
                 f"{ident(pdb)}: unhealthyPodEvictionPolicy must be AlwaysAllow, or a storage outage "
                 "(every pod unready) blocks node drains")

    # Endpoints in connection strings: KEDA's operator resolves them from its own namespace, so
    # an in-cluster host must be <service>.<namespace>.svc[.cluster.local] of a Service here.
    services = {(s["metadata"].get("namespace"), s["metadata"]["name"]): s
                for s in by_kind.get("Service", {}).values()}
    n_hosts = 0
    for sec in list(secrets.values()) + list(cms.values()):
        for k, v in {**sec.get("stringData", {}), **sec.get("data", {})}.items():
            for host, port in re.findall(r"Endpoint=https?://([^:/;]+)(?::(\d+))?", str(v)):
                n_hosts += 1
                if host.endswith(".core.windows.net"):
                    continue
                m = re.fullmatch(r"([a-z0-9-]+)\.([a-z0-9-]+)\.svc(?:\.cluster\.local)?", host)
                pr.check(m is not None, f"{ident(sec)} {k}: host {host!r} is not a fully qualified "
                         "Service name; KEDA's operator in its own namespace cannot resolve it")
                if m:
                    svc = services.get((m.group(2), m.group(1)))
                    pr.check(svc is not None, f"{ident(sec)} {k}: no Service {m.group(1)} in namespace "
                             f"{m.group(2)} in this variant")
                    if svc and port:
                        pr.check(int(port) in {p["port"] for p in svc["spec"]["ports"]},
                                 f"{ident(sec)} {k}: Service {m.group(1)} has no port {port}")

    # Ingress: default deny, metrics from the monitoring namespace, egress untouched.
    pols = by_kind.get("NetworkPolicy", {}).values()
    deny = [p for p in pols if p["spec"].get("podSelector") in ({}, None)
            and p["spec"].get("policyTypes") == ["Ingress"] and not p["spec"].get("ingress")]
    pr.check(len(deny) == 1, "expected one default-deny ingress NetworkPolicy (podSelector {}, no rules)")
    for p in pols:
        pr.check("Egress" not in p["spec"].get("policyTypes", []),
                 f"{ident(p)}: restricts egress (Storage, Entra ID, IMDS and DNS must stay reachable)")

    def allowed_from(pol: dict, namespace: str, port: int) -> bool:
        for rule in pol["spec"].get("ingress", []) or []:
            ports = {p.get("port") for p in rule.get("ports", []) or []}
            if ports and port not in ports:
                continue
            for peer in rule.get("from", []) or []:
                sel = peer.get("namespaceSelector", {})
                if sel.get("matchLabels", {}).get("kubernetes.io/metadata.name") == namespace:
                    return True
                for ex in sel.get("matchExpressions", []) or []:
                    if (ex.get("key") == "kubernetes.io/metadata.name" and ex.get("operator") == "In"
                            and namespace in ex.get("values", [])):
                        return True
        return False

    def selects(pol: dict, labels: dict) -> bool:
        sel = pol["spec"].get("podSelector", {}).get("matchLabels", {})
        return all(labels.get(k) == v for k, v in sel.items())

    for where, tmpl in templates:
        labels = tmpl.get("metadata", {}).get("labels", {})
        if labels.get("app.kubernetes.io/name") == "rollq":
            pr.check(any(selects(p, labels) and allowed_from(p, params.get("MONITORING_NAMESPACE"), 8080)
                         for p in pols),
                     f"{where}: no NetworkPolicy lets MONITORING_NAMESPACE "
                     f"{params.get('MONITORING_NAMESPACE')!r} reach port 8080")
        if labels.get("app.kubernetes.io/name") == "azurite":
            pr.check(any(selects(p, labels) and allowed_from(p, params.get("KEDA_NAMESPACE"), 10001)
                         for p in pols),
                     f"{where}: no NetworkPolicy lets KEDA_NAMESPACE {params.get('KEDA_NAMESPACE')!r} "
                     "reach Azurite's queue port")

    # Monitoring component: KEDA's operator is scraped where it runs, keeping its labels.
    pm = by_kind.get("PodMonitor", {}).get("keda-operator")
    if "PrometheusRule" in by_kind:
        pr.check(pm is not None, "PrometheusRule alerts on KEDA metrics but no PodMonitor keda-operator")
    if pm:
        pr.check(pm["spec"].get("namespaceSelector", {}).get("matchNames") == [params.get("KEDA_NAMESPACE")],
                 f"{ident(pm)}: namespaceSelector must be [KEDA_NAMESPACE]")
        pr.check(all(ep.get("honorLabels") is True for ep in pm["spec"]["podMetricsEndpoints"]),
                 f"{ident(pm)}: honorLabels must be true (KEDA's `namespace` label is the ScaledObject's)")
    for rule_obj in by_kind.get("PrometheusRule", {}).values():
        for g in rule_obj["spec"]["groups"]:
            for r in g["rules"]:
                if "alert" in r:
                    url = r.get("annotations", {}).get("runbook_url", "")
                    pr.check(url.startswith(params.get("RUNBOOK_URL", "?") + "#"),
                             f"{ident(rule_obj)} {r['alert']}: runbook_url {url!r} not under RUNBOOK_URL")
    return pr.finish(f"{len(objs)} objects in namespace {ns}, {len(templates)} pod template(s) restricted, "
                     f"{n_refs} ConfigMap/Secret references and {n_hosts} endpoint host(s) resolve")


# --- alert conventions -------------------------------------------------------------------------

def github_anchor(heading: str) -> str:
    a = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return a.replace(" ", "-")


def cmd_alerts(args: argparse.Namespace) -> int:
    pr = Problems("alerts")
    runbook = Path(args.runbook).read_text(encoding="utf-8")
    # `## Heading` sections of the runbook and their text.
    sections: dict[str, str] = {}
    for m in re.finditer(r"^## ([^\n]+)\n(.*?)(?=^## |\Z)", runbook, re.M | re.S):
        sections[github_anchor(m.group(1))] = m.group(2)
    rules = [o for o in load_all(args.built) if o.get("kind") == "PrometheusRule"]
    pr.check(bool(rules), "no PrometheusRule in the build")
    alerts = set()
    for obj in rules:
        for g in obj["spec"]["groups"]:
            for r in g["rules"]:
                if "record" in r:
                    name = r["record"]
                    m = re.fullmatch(r"([a-z][a-z0-9_]*):([a-z][a-z0-9_]*):([a-z][a-z0-9_]*)", name)
                    pr.check(m is not None, f"recording rule {name}: not named level:metric:operations")
                    by = re.match(r"\s*\w+\s+by\s*\(([^)]*)\)", r["expr"])
                    if m and by:
                        level = "_".join(x.strip() for x in by.group(1).split(","))
                        pr.check(m.group(1) == level,
                                 f"recording rule {name}: level {m.group(1)!r} but it keeps ({level})")
                    continue
                alert = r["alert"]
                alerts.add(alert)
                ann = r.get("annotations", {})
                for key in ("summary", "description", "runbook_url"):
                    pr.check(bool(str(ann.get(key, "")).strip()), f"{alert}: no {key} annotation")
                url = ann.get("runbook_url", "")
                m = re.fullmatch(r"https?://[^\s#]+#([\w-]+)", url)
                pr.check(m is not None, f"{alert}: runbook_url {url!r} is not an absolute URL with #section")
                if m:
                    anchor = m.group(1)
                    pr.check(anchor == github_anchor(alert), f"{alert}: runbook_url points to #{anchor}")
                    body = sections.get(anchor)
                    pr.check(body is not None, f"{alert}: {args.runbook} has no section `## {alert}`")
                    if body is not None:
                        for part in ("What to check", "What to do"):
                            pr.check(part in body, f"{alert}: runbook section has no '{part}'")
    stale = {a for a in sections if a.startswith("rollq")} - {github_anchor(a) for a in alerts}
    pr.check(not stale, f"{args.runbook}: sections for alerts that do not exist: {sorted(stale)}")
    return pr.finish(f"{len(alerts)} alerts with summary, description and a runbook section")


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
            # Not inside a recording rule's name (namespace:<gauge>:max), which is aggregated.
            for m in re.finditer(rf"(?<![\w:]){gauge}(?![\w:])", e):
                wrapper = re.search(
                    r"(\w+)\s*(?:(?:by|without)\s*\([^)]*\)\s*)?\(\s*$", e[: m.start()])
                pr.check(wrapper is not None and wrapper.group(1) == "max",
                         f"{where}: {gauge} must be aggregated with max(...) in {e!r}")
    # The dashboard shows one namespace at a time: every series a panel selects is filtered by
    # the namespace variable (KEDA's and kube-state-metrics' series included).
    for where, e in dashboard_exprs(json.loads(Path(args.dashboard).read_text(encoding="utf-8"))):
        if not where.startswith("panel"):
            continue
        for n in promql_metric_names(e):
            for m in re.finditer(rf"(?<![\w:]){re.escape(n)}(?![\w:])(\{{[^}}]*\}})?", e):
                pr.check('namespace=~"$namespace"' in (m.group(1) or ""),
                         f"{where}: {n} is not filtered by namespace=~\"$namespace\" in {e!r}")
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
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
    p = sub.add_parser("cluster")
    p.add_argument("--params", required=True)
    p.add_argument("built")
    p.set_defaults(fn=cmd_cluster)
    p = sub.add_parser("alerts")
    p.add_argument("--runbook", required=True)
    p.add_argument("built")
    p.set_defaults(fn=cmd_alerts)
    args = ap.parse_args()
    try:
        return args.fn(args)
    except (KeyError, TypeError, ValueError, yaml.YAMLError, json.JSONDecodeError) as e:
        print(f"FAIL [{args.cmd}] malformed input: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
