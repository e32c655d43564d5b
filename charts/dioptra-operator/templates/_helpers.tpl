{{/* Chart name, overridable with nameOverride. */}}
{{- define "dioptra-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's resources: "<release>-<chart>", or the release name alone when it
already contains the chart name. Truncated to 63 characters (DNS label limit).
*/}}
{{- define "dioptra-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "name-version" for the helm.sh/chart label. */}}
{{- define "dioptra-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator's Pods; never change them after a release exists. */}}
{{- define "dioptra-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dioptra-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels on every resource of the chart. */}}
{{- define "dioptra-operator.labels" -}}
helm.sh/chart: {{ include "dioptra-operator.chart" . }}
{{ include "dioptra-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: dioptra
{{- end }}

{{/* The operator's ServiceAccount name. */}}
{{- define "dioptra-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "dioptra-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Namespaces the operator watches in single-namespace mode (default: the release's). */}}
{{- define "dioptra-operator.watchNamespaces" -}}
{{- if .Values.watch.namespaces }}
{{- join "," .Values.watch.namespaces }}
{{- else }}
{{- .Release.Namespace }}
{{- end }}
{{- end }}

{{/* Namespaces that get the runner's ServiceAccount and Role, comma-separated. */}}
{{- define "dioptra-operator.runnerNamespaces" -}}
{{- if not .Values.watch.clusterWide }}
{{- include "dioptra-operator.watchNamespaces" . }}
{{- else if .Values.runner.namespaces }}
{{- join "," .Values.runner.namespaces }}
{{- else }}
{{- .Release.Namespace }}
{{- end }}
{{- end }}

{{/* Operator image reference; the tag defaults to the chart's appVersion. */}}
{{- define "dioptra-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Runner image reference; the tag defaults to the chart's appVersion. */}}
{{- define "dioptra-operator.runnerImage" -}}
{{- printf "%s:%s" .Values.runner.image.repository (default .Chart.AppVersion .Values.runner.image.tag) }}
{{- end }}

{{/*
What the operator does inside a watched namespace; shared by the ClusterRole (cluster-wide mode)
and the per-namespace Roles. Each rule says why it exists; nothing uses "*".
*/}}
{{- define "dioptra-operator.namespacedRules" -}}
# Watch Experiments, re-read one before writing its status, and patch their metadata (kopf's
# finalizer and progress annotations).
- apiGroups: ["dioptra.dev"]
  resources: ["experiments"]
  verbs: ["get", "list", "watch", "patch"]
# Write phase, conditions, observedGeneration and jobName (merge patch; reads go through the
# Experiment itself).
- apiGroups: ["dioptra.dev"]
  resources: ["experiments/status"]
  verbs: ["patch"]
# Own Jobs with blockOwnerDeletion: true (kopf.adopt), which the OwnerReferencesPermissionEnforcement
# admission plugin (on in OpenShift) allows only to those who may update the owner's finalizers.
- apiGroups: ["dioptra.dev"]
  resources: ["experiments/finalizers"]
  verbs: ["update"]
# Create one Job per Experiment generation, follow it, unsuspend/adjust it, and delete stale ones.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Watch the Job's Pods to report truthful failures (OOMKilled, image pull, init container);
# kopf's watch cache is the only reader, so no "get".
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# Post Events on Experiments (kopf's handler events and our condition changes). kopf only
# POSTs new core/v1 Events: it never patches them nor uses events.k8s.io. List the Job
# controller's FailedCreate Events of a Job that has no Pod, to say why on the Experiment.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "list"]
{{- end }}

{{/* Cluster-scoped reads kopf makes in every mode: it notices CRDs added or removed at runtime. */}}
{{- define "dioptra-operator.crdObserverRules" -}}
# kopf watches CustomResourceDefinitions to notice the Experiment CRD being (re)installed.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- end }}

{{/*
Name of the Prefect server's Deployment, Service and claim: "<fullname>-prefect", with the full
name cut so the result stays a 63-character DNS label.
*/}}
{{- define "dioptra-operator.prefectName" -}}
{{- printf "%s-prefect" (include "dioptra-operator.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/*
Labels that select the Prefect server's Pods. Its own app.kubernetes.io/name, because the
operator's Deployment and Service select on name + instance alone: sharing them would make the
operator's selectors match the Prefect Pod too.
*/}}
{{- define "dioptra-operator.prefectSelectorLabels" -}}
app.kubernetes.io/name: prefect-server
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels on every Prefect server resource. */}}
{{- define "dioptra-operator.prefectLabels" -}}
helm.sh/chart: {{ include "dioptra-operator.chart" . }}
{{ include "dioptra-operator.prefectSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: dioptra
app.kubernetes.io/component: prefect-server
{{- end }}

{{/* Prefect server image: the runner image unless prefect.server.image names another. */}}
{{- define "dioptra-operator.prefectImage" -}}
{{- $image := .Values.prefect.server.image }}
{{- if $image.repository }}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) }}
{{- else }}
{{- printf "%s:%s" .Values.runner.image.repository (default (default .Chart.AppVersion .Values.runner.image.tag) $image.tag) }}
{{- end }}
{{- end }}

{{/*
The PREFECT_API_URL runners get: an explicit prefect.apiUrl always wins; else the chart's Prefect
server by its fully qualified Service name (runner Pods run in other namespaces in cluster-wide
mode); else empty (each runner starts Prefect's ephemeral API).
*/}}
{{- define "dioptra-operator.prefectApiUrl" -}}
{{- if .Values.prefect.apiUrl }}
{{- .Values.prefect.apiUrl }}
{{- else if .Values.prefect.server.enabled }}
{{- printf "http://%s.%s.svc:%d/api" (include "dioptra-operator.prefectName" .) .Release.Namespace (int .Values.prefect.server.service.port) }}
{{- end }}
{{- end }}
