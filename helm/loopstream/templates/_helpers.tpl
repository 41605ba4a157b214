{{/* Chart name, truncated to the 63 characters DNS labels allow. */}}
{{- define "loopstream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name prefix. Kept short enough (<= 42) that "-triton-headless" and the
StatefulSet pod/PVC suffixes still fit in 63 characters.
*/}}
{{- define "loopstream.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 42 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 42 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 42 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "loopstream.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "loopstream.labels" -}}
helm.sh/chart: {{ include "loopstream.chart" . }}
app.kubernetes.io/name: {{ include "loopstream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: loopstream
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component (triton | tracker): immutable, keep minimal. */}}
{{- define "loopstream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "loopstream.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "loopstream.triton.fullname" -}}
{{- printf "%s-triton" (include "loopstream.fullname" .) }}
{{- end }}

{{- define "loopstream.triton.headless" -}}
{{- printf "%s-triton-headless" (include "loopstream.fullname" .) }}
{{- end }}

{{- define "loopstream.tracker.fullname" -}}
{{- printf "%s-tracker" (include "loopstream.fullname" .) }}
{{- end }}

{{- define "loopstream.tracker.serviceAccountName" -}}
{{- if .Values.tracker.serviceAccount.create }}
{{- default (include "loopstream.tracker.fullname" .) .Values.tracker.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.tracker.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "loopstream.tracker.tokenSecret" -}}
{{- default (printf "%s-token" (include "loopstream.tracker.fullname" .)) .Values.tracker.auth.existingSecret }}
{{- end }}

{{- define "loopstream.tracker.tlsSecret" -}}
{{- if .Values.tracker.tls.certManager.enabled }}
{{- printf "%s-tls" (include "loopstream.tracker.fullname" .) }}
{{- else }}
{{- required "tracker.tls.existingSecret is required when tracker.tls.enabled and cert-manager is off" .Values.tracker.tls.existingSecret }}
{{- end }}
{{- end }}

{{- define "loopstream.abPolicyConfigMap" -}}
{{- printf "%s-ab-policy" (include "loopstream.tracker.fullname" .) }}
{{- end }}

{{- define "loopstream.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}

{{/* Does the cluster serve the prometheus-operator CRDs? */}}
{{- define "loopstream.hasMonitoringCRDs" -}}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" }}true{{ end }}
{{- end }}

{{/*
The triton model repository argument, by source. Object storage URLs go to
Triton as they are (Triton reads s3:// and gs:// repositories itself).
*/}}
{{- define "loopstream.triton.repository" -}}
{{- $r := .Values.triton.modelRepository }}
{{- if has $r.source (list "s3" "gcs") }}
{{- $url := required (printf "triton.modelRepository.objectStorage.url is required for source %s" $r.source) $r.objectStorage.url }}
{{- if and (eq $r.source "s3") (not (hasPrefix "s3://" $url)) }}
{{- fail "triton.modelRepository.objectStorage.url must start with s3:// for source s3" }}
{{- end }}
{{- if and (eq $r.source "gcs") (not (hasPrefix "gs://" $url)) }}
{{- fail "triton.modelRepository.objectStorage.url must start with gs:// for source gcs" }}
{{- end }}
{{- $url }}
{{- else }}
{{- $r.path }}
{{- end }}
{{- end }}

{{/*
Custom-metric PromQL, shared by the prometheus-adapter rules. Queue time per
request = rate(total queue time) / rate(successful requests); clamp_min keeps
an idle pod at 0 instead of NaN.
*/}}
{{- define "loopstream.core.measures.modelMatcher" -}}
model=~"{{ .Values.prometheusAdapter.rules.modelRegex }}"
{{- end }}

{{- define "loopstream.triton.adminSecret" -}}
{{- default (printf "%s-admin" (include "loopstream.triton.fullname" .)) .Values.triton.admin.existingSecret }}
{{- end }}

{{/*
Environment of a container that knows the admin header (Triton itself, and the tracker pod where
loopstream-rollout runs): key and value from the Secret. Argument: the prefix of the names.
*/}}
{{- define "loopstream.triton.adminEnv" -}}
- name: {{ .prefix }}_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "loopstream.triton.adminSecret" .root }}
      key: key
- name: {{ .prefix }}_VALUE
  valueFrom:
    secretKeyRef:
      name: {{ include "loopstream.triton.adminSecret" .root }}
      key: value
{{- end }}
