{{/* Names, labels, the image reference and ServiceAccount names: what every object is called. */}}

{{/* Names ------------------------------------------------------------------------------ */}}

{{- define "threadkeeper.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name, kept short enough for the `-reaper-metrics`-style suffixes below. */}}
{{- define "threadkeeper.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 48 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 48 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 48 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "threadkeeper.reaperName" -}}
{{- printf "%s-reaper" (include "threadkeeper.fullname" .) }}
{{- end }}

{{- define "threadkeeper.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels ----------------------------------------------------------------------------- */}}

{{- define "threadkeeper.selectorLabels" -}}
app.kubernetes.io/name: {{ include "threadkeeper.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "threadkeeper.labels" -}}
helm.sh/chart: {{ include "threadkeeper.chart" . }}
{{ include "threadkeeper.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: threadkeeper
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of one component: `include "threadkeeper.componentLabels" (list . "service")`. */}}
{{- define "threadkeeper.componentLabels" -}}
{{ include "threadkeeper.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "threadkeeper.componentSelectorLabels" -}}
{{ include "threadkeeper.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* Image ------------------------------------------------------------------------------ */}}

{{- define "threadkeeper.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}
{{- end }}

{{/* ServiceAccounts -------------------------------------------------------------------- */}}

{{- define "threadkeeper.serviceAccountName" -}}
{{- if .Values.service.serviceAccount.create }}
{{- default (include "threadkeeper.fullname" .) .Values.service.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.service.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "threadkeeper.reaperServiceAccountName" -}}
{{- if .Values.reaper.serviceAccount.create }}
{{- default (include "threadkeeper.reaperName" .) .Values.reaper.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.reaper.serviceAccount.name }}
{{- end }}
{{- end }}
