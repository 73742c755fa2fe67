#!/usr/bin/env bash
# Creates (or brings up to date) everything rollq needs on Azure, idempotently: run it again
# after a change and it only adds what is missing.
#
#   az login && az account set --subscription <id>
#   deploy/azure/setup.sh            # names below, each overridable from the environment
#
# The names the manifests also use (namespace, storage account, queue, containers, registry,
# KEDA's namespace) are read from the same parameters file as kustomize reads,
# deploy/params/params.env (or the file named by PARAMS), so they are typed once.
#
# What it sets up:
#   - resource group, ACR, storage account with shared-key access OFF (Entra ID only);
#   - the work queue, its `<queue>-poison` queue, input/output containers, a dead-letter container;
#   - AKS with the OIDC issuer, workload identity and the KEDA add-on, pulling from the ACR;
#   - user-assigned identities federated to Kubernetes service accounts:
#       id-rollq       ↔ system:serviceaccount:$NAMESPACE:rollq  (the worker)
#       id-keda-rollq  ↔ system:serviceaccount:$KEDA_NAMESPACE:keda-operator (KEDA's scaler;
#                        kube-system for the AKS KEDA add-on)
#   - least-privilege role assignments scoped to single queues and containers;
#   - an Event Grid subscription: BlobCreated in the input container → the queue, skipping
#     `_aggregated.csv` outputs, messages that never expire, a dead-letter container, delivered
#     with the system topic's managed identity (shared keys are off).
# It prints the two client ids to put into the parameters file at the end.
set -euo pipefail

PARAMS=${PARAMS:-$(dirname "$0")/../params/params.env}
[ -f "$PARAMS" ] || { echo "setup.sh: no parameters file $PARAMS" >&2; exit 2; }
# param NAME: the value of NAME in the parameters file (empty when absent).
param() { sed -n "s/^$1=//p" "$PARAMS" | tail -n 1; }

LOCATION=${LOCATION:-westeurope}
RG=${RG:-rg-rollq}
IMAGE=$(param IMAGE)
ACR=${ACR:-${IMAGE%%.azurecr.io/*}}
STORAGE=${STORAGE:-$(param STORAGE_ACCOUNT)}
AKS=${AKS:-aks-rollq}
NAMESPACE=${NAMESPACE:-$(param NAMESPACE)}
KEDA_NAMESPACE=${KEDA_NAMESPACE:-$(param KEDA_NAMESPACE)}
QUEUE=${QUEUE:-$(param QUEUE)}
INPUT_CONTAINER=${INPUT_CONTAINER:-$(param INPUT_CONTAINER)}
OUTPUT_CONTAINER=${OUTPUT_CONTAINER:-$(param OUTPUT_CONTAINER)}
DEADLETTER_CONTAINER=${DEADLETTER_CONTAINER:-eventgrid-deadletter}
ROLLQ_IDENTITY=${ROLLQ_IDENTITY:-id-rollq}
KEDA_IDENTITY=${KEDA_IDENTITY:-id-keda-rollq}
SYSTEM_TOPIC=${SYSTEM_TOPIC:-${STORAGE}-events}
SUBSCRIPTION_NAME=${SUBSCRIPTION_NAME:-rollq-blob-created}
POISON_QUEUE=$QUEUE-poison

log() { printf '== %s\n' "$*"; }
exists() { "$@" >/dev/null 2>&1; }

# assign_role PRINCIPAL_ID PRINCIPAL_TYPE ROLE SCOPE: creates the assignment unless it exists.
assign_role() {
    local principal=$1 type=$2 role=$3 scope=$4 n
    n=$(az role assignment list --assignee "$principal" --role "$role" --scope "$scope" \
        --query 'length(@)' -o tsv)
    if [ "$n" = 0 ]; then
        log "role '$role' for $principal on ${scope##*/providers/}"
        az role assignment create --assignee-object-id "$principal" \
            --assignee-principal-type "$type" --role "$role" --scope "$scope" -o none
    fi
}

# retry N CMD...: data-plane calls right after a role assignment can fail until it propagates.
retry() {
    local n=$1 i; shift
    for ((i = 1; i <= n; i++)); do
        if "$@"; then return 0; fi
        log "retrying in 20s ($i/$n): $*"
        sleep 20
    done
    return 1
}

log "resource group $RG ($LOCATION)"
az group create -n "$RG" -l "$LOCATION" -o none

log "container registry $ACR"
exists az acr show -n "$ACR" -g "$RG" || az acr create -n "$ACR" -g "$RG" --sku Basic -o none

log "storage account $STORAGE (shared key off, TLS 1.2, no public blobs)"
if ! exists az storage account show -n "$STORAGE" -g "$RG"; then
    az storage account create -n "$STORAGE" -g "$RG" -l "$LOCATION" --kind StorageV2 \
        --sku Standard_LRS --min-tls-version TLS1_2 --allow-blob-public-access false \
        --allow-shared-key-access false -o none
else
    az storage account update -n "$STORAGE" -g "$RG" --allow-shared-key-access false \
        --min-tls-version TLS1_2 --allow-blob-public-access false -o none
fi
STORAGE_ID=$(az storage account show -n "$STORAGE" -g "$RG" --query id -o tsv)
QUEUE_ID=$STORAGE_ID/queueServices/default/queues/$QUEUE
POISON_ID=$STORAGE_ID/queueServices/default/queues/$POISON_QUEUE
INPUT_ID=$STORAGE_ID/blobServices/default/containers/$INPUT_CONTAINER
OUTPUT_ID=$STORAGE_ID/blobServices/default/containers/$OUTPUT_CONTAINER
DEADLETTER_ID=$STORAGE_ID/blobServices/default/containers/$DEADLETTER_CONTAINER

# With shared keys off, data-plane set-up runs as the signed-in user, who needs data roles.
ME=$(az ad signed-in-user show --query id -o tsv)
assign_role "$ME" User "Storage Queue Data Contributor" "$STORAGE_ID"
assign_role "$ME" User "Storage Blob Data Contributor" "$STORAGE_ID"

log "queues $QUEUE, $POISON_QUEUE"
for q in "$QUEUE" "$POISON_QUEUE"; do
    retry 9 az storage queue create --account-name "$STORAGE" --auth-mode login -n "$q" -o none
done
log "containers $INPUT_CONTAINER, $OUTPUT_CONTAINER, $DEADLETTER_CONTAINER"
for c in "$INPUT_CONTAINER" "$OUTPUT_CONTAINER" "$DEADLETTER_CONTAINER"; do
    exists az storage container-rm show --storage-account "$STORAGE" -g "$RG" -n "$c" ||
        az storage container-rm create --storage-account "$STORAGE" -g "$RG" -n "$c" -o none
done

log "AKS $AKS (OIDC issuer, workload identity, KEDA add-on)"
if ! exists az aks show -n "$AKS" -g "$RG"; then
    az aks create -n "$AKS" -g "$RG" -l "$LOCATION" --node-count 2 --zones 1 2 3 \
        --enable-oidc-issuer --enable-workload-identity --enable-keda \
        --attach-acr "$ACR" --generate-ssh-keys -o none
else
    enabled=$(az aks show -n "$AKS" -g "$RG" --query \
        '[oidcIssuerProfile.enabled, securityProfile.workloadIdentity.enabled, workloadAutoScalerProfile.keda.enabled]' -o tsv | tr '\n\t' '  ')
    if [ "$enabled" != "true true true " ]; then
        az aks update -n "$AKS" -g "$RG" --enable-oidc-issuer --enable-workload-identity \
            --enable-keda -o none
    fi
    az aks update -n "$AKS" -g "$RG" --attach-acr "$ACR" -o none
fi
OIDC_ISSUER=$(az aks show -n "$AKS" -g "$RG" --query oidcIssuerProfile.issuerUrl -o tsv)

# federate IDENTITY NAME SUBJECT: a federated credential trusting one service account.
federate() {
    local identity=$1 name=$2 subject=$3
    exists az identity federated-credential show -g "$RG" --identity-name "$identity" -n "$name" ||
        az identity federated-credential create -g "$RG" --identity-name "$identity" -n "$name" \
            --issuer "$OIDC_ISSUER" --subject "$subject" --audiences api://AzureADTokenExchange -o none
}

log "identity $ROLLQ_IDENTITY for the worker"
exists az identity show -g "$RG" -n "$ROLLQ_IDENTITY" || az identity create -g "$RG" -n "$ROLLQ_IDENTITY" -o none
ROLLQ_CLIENT_ID=$(az identity show -g "$RG" -n "$ROLLQ_IDENTITY" --query clientId -o tsv)
ROLLQ_PRINCIPAL=$(az identity show -g "$RG" -n "$ROLLQ_IDENTITY" --query principalId -o tsv)
federate "$ROLLQ_IDENTITY" rollq-worker "system:serviceaccount:$NAMESPACE:rollq"
# Least privilege, each at the narrowest scope: receive/renew/delete on the work queue (Update
# Message needs Contributor, Processor cannot renew a lease), send + count on the poison queue,
# read inputs, write outputs.
assign_role "$ROLLQ_PRINCIPAL" ServicePrincipal "Storage Queue Data Contributor" "$QUEUE_ID"
assign_role "$ROLLQ_PRINCIPAL" ServicePrincipal "Storage Queue Data Contributor" "$POISON_ID"
assign_role "$ROLLQ_PRINCIPAL" ServicePrincipal "Storage Blob Data Reader" "$INPUT_ID"
assign_role "$ROLLQ_PRINCIPAL" ServicePrincipal "Storage Blob Data Contributor" "$OUTPUT_ID"

log "identity $KEDA_IDENTITY for KEDA's azure-queue scaler"
exists az identity show -g "$RG" -n "$KEDA_IDENTITY" || az identity create -g "$RG" -n "$KEDA_IDENTITY" -o none
KEDA_CLIENT_ID=$(az identity show -g "$RG" -n "$KEDA_IDENTITY" --query clientId -o tsv)
KEDA_PRINCIPAL=$(az identity show -g "$RG" -n "$KEDA_IDENTITY" --query principalId -o tsv)
# The AKS KEDA add-on runs keda-operator in kube-system (KEDA_NAMESPACE);
# TriggerAuthentication.identityId makes it use this identity with its own service-account token.
federate "$KEDA_IDENTITY" keda-operator "system:serviceaccount:$KEDA_NAMESPACE:keda-operator"
# Reading the queue length (and peeking, for the ScaledJob's visibleonly) is all KEDA does.
assign_role "$KEDA_PRINCIPAL" ServicePrincipal "Storage Queue Data Reader" "$QUEUE_ID"

log "Event Grid: BlobCreated in $INPUT_CONTAINER → $QUEUE"
exists az eventgrid system-topic show -g "$RG" -n "$SYSTEM_TOPIC" ||
    az eventgrid system-topic create -g "$RG" -n "$SYSTEM_TOPIC" -l "$LOCATION" \
        --topic-type Microsoft.Storage.StorageAccounts --source "$STORAGE_ID" \
        --identity systemassigned -o none
TOPIC_PRINCIPAL=$(az eventgrid system-topic show -g "$RG" -n "$SYSTEM_TOPIC" --query identity.principalId -o tsv)
assign_role "$TOPIC_PRINCIPAL" ServicePrincipal "Storage Queue Data Message Sender" "$QUEUE_ID"
assign_role "$TOPIC_PRINCIPAL" ServicePrincipal "Storage Blob Data Contributor" "$DEADLETTER_ID"
if ! exists az eventgrid system-topic event-subscription show -g "$RG" --system-topic-name "$SYSTEM_TOPIC" -n "$SUBSCRIPTION_NAME"; then
    # Filters: only block blobs committed in the input container, never our own outputs
    # (`*_aggregated.csv`), so a roll-up cannot trigger another. TTL -1: a message waits in the
    # queue until a worker takes it, however long KEDA takes to scale from zero. Undeliverable
    # events go to the dead-letter container instead of vanishing.
    retry 6 az eventgrid system-topic event-subscription create -g "$RG" \
        --system-topic-name "$SYSTEM_TOPIC" -n "$SUBSCRIPTION_NAME" \
        --included-event-types Microsoft.Storage.BlobCreated \
        --subject-begins-with "/blobServices/default/containers/$INPUT_CONTAINER/blobs/" \
        --advanced-filter subject StringNotEndsWith _aggregated.csv \
        --advanced-filter data.api StringIn PutBlob PutBlockList CopyBlob FlushWithClose \
        --delivery-identity systemassigned --delivery-identity-endpoint-type storagequeue \
        --delivery-identity-endpoint "$QUEUE_ID" --storage-queue-msg-ttl -1 \
        --deadletter-identity systemassigned --deadletter-identity-endpoint "$DEADLETTER_ID" \
        --max-delivery-attempts 30 --event-ttl 1440 -o none
fi

cat <<EOF

Done. Put these values into $PARAMS (then: kubectl apply -k deploy/aks):
  WORKER_CLIENT_ID=$ROLLQ_CLIENT_ID
  KEDA_CLIENT_ID=$KEDA_CLIENT_ID
and, if you overrode them here: STORAGE_ACCOUNT=$STORAGE QUEUE=$QUEUE NAMESPACE=$NAMESPACE
  KEDA_NAMESPACE=$KEDA_NAMESPACE INPUT_CONTAINER=$INPUT_CONTAINER OUTPUT_CONTAINER=$OUTPUT_CONTAINER
  IMAGE=$ACR.azurecr.io/rollq:<tag>
Credentials for kubectl:  az aks get-credentials -g $RG -n $AKS
EOF
