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

{{/* Database Secret -------------------------------------------------------------------- */}}

{{/* The Secret the service and the RetentionPolicy read the URL from. */}}
{{- define "threadkeeper.databaseSecretName" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecret }}
{{- else }}
{{- printf "%s-database" (include "threadkeeper.fullname" .) }}
{{- end }}
{{- end }}

{{- define "threadkeeper.databaseSecretKey" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecretKey }}
{{- else -}}
url
{{- end }}
{{- end }}

{{/*
The Secret the migration hook reads. A chart-rendered URL also goes into a short-lived hook
Secret, because pre-install hooks run before the release's own Secret exists (and pre-upgrade
hooks before it is updated, so a changed URL is migrated before the replicas use it).
*/}}
{{- define "threadkeeper.migrateSecretName" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecret }}
{{- else }}
{{- printf "%s-migrate" (include "threadkeeper.fullname" .) }}
{{- end }}
{{- end }}

{{- define "threadkeeper.validate" -}}
{{- if and (not .Values.database.existingSecret) (not .Values.database.url) }}
{{- fail "set database.existingSecret (a Secret with key `url`) or database.url" }}
{{- end }}
{{- if eq .Values.auth.mode "jwt" }}
{{- if not (or .Values.auth.jwt.existingSecret .Values.auth.jwt.secret .Values.auth.jwt.publicKey) }}
{{- fail "auth.mode=jwt needs auth.jwt.existingSecret, auth.jwt.secret or auth.jwt.publicKey" }}
{{- end }}
{{- if and .Values.auth.jwt.secret .Values.auth.jwt.publicKey }}
{{- fail "set only one of auth.jwt.secret (HS256) and auth.jwt.publicKey (RS256/ES256)" }}
{{- end }}
{{- end }}
{{- if gt (int .Values.service.pool.minSize) (int .Values.service.pool.maxSize) }}
{{- fail "service.pool.minSize must not exceed service.pool.maxSize" }}
{{- end }}
{{- /* uvicorn's graceful shutdown is 25 s (service/cli.py), after the preStop sleep. */}}
{{- if lt (int .Values.service.terminationGracePeriodSeconds) (add (int .Values.service.preStopSleepSeconds) 25) }}
{{- fail "service.terminationGracePeriodSeconds must be at least service.preStopSleepSeconds + 25 (uvicorn's graceful shutdown)" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (not .Values.service.resources.requests.cpu) }}
{{- fail "autoscaling.enabled needs service.resources.requests.cpu (the HPA targets CPU utilisation)" }}
{{- end }}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- if gt (int .Values.alerts.tableBytesWarning) (int .Values.alerts.tableBytesCritical) }}
{{- fail "alerts.tableBytesWarning must not exceed alerts.tableBytesCritical" }}
{{- end }}
{{- end }}

{{/* Durations -------------------------------------------------------------------------- */}}

{{/* Seconds of a RetentionPolicy-style duration (`<n>s|m|h|d|w`), e.g. "10m" -> 600. */}}
{{- define "threadkeeper.durationSeconds" -}}
{{- $d := toString . }}
{{- if not (regexMatch "^[1-9][0-9]{0,8}[smhdw]$" $d) }}
{{- fail (printf "%q is not a duration like 10m, 6h, 7d (units s, m, h, d, w)" $d) }}
{{- end }}
{{- $n := regexFind "^[0-9]+" $d | int64 }}
{{- $unit := trimPrefix (toString $n) $d }}
{{- $factor := get (dict "s" 1 "m" 60 "h" 3600 "d" 86400 "w" 604800) $unit }}
{{- mul $n $factor }}
{{- end }}

{{/* Pod security ------------------------------------------------------------------------ */}}

{{/* Pod Security Standards "restricted", plus a fixed numeric user. */}}
{{- define "threadkeeper.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.runAsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "threadkeeper.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Environment --------------------------------------------------------------------- */}}

{{- define "threadkeeper.jwtSecretName" -}}
{{- if .Values.auth.jwt.existingSecret }}
{{- .Values.auth.jwt.existingSecret }}
{{- else }}
{{- printf "%s-jwt" (include "threadkeeper.fullname" .) }}
{{- end }}
{{- end }}

{{/* The service's environment: everything from values, secrets only by secretKeyRef. */}}
{{- define "threadkeeper.serviceEnv" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "threadkeeper.databaseSecretName" . }}
      key: {{ include "threadkeeper.databaseSecretKey" . }}
- name: THREADKEEPER_AUTH
  value: {{ .Values.auth.mode | quote }}
{{- if eq .Values.auth.mode "header" }}
- name: THREADKEEPER_AUTH_HEADER
  value: {{ .Values.auth.header | quote }}
{{- end }}
{{- if eq .Values.auth.mode "jwt" }}
{{- if or .Values.auth.jwt.existingSecret .Values.auth.jwt.secret }}
- name: THREADKEEPER_JWT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "threadkeeper.jwtSecretName" . }}
      key: secret
      {{- if .Values.auth.jwt.existingSecret }}
      optional: true
      {{- end }}
{{- end }}
{{- if or .Values.auth.jwt.existingSecret .Values.auth.jwt.publicKey }}
- name: THREADKEEPER_JWT_PUBLIC_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "threadkeeper.jwtSecretName" . }}
      key: publicKey
      {{- if .Values.auth.jwt.existingSecret }}
      optional: true
      {{- end }}
{{- end }}
{{- with .Values.auth.jwt.audience }}
- name: THREADKEEPER_JWT_AUDIENCE
  value: {{ . | quote }}
{{- end }}
{{- with .Values.auth.jwt.issuer }}
- name: THREADKEEPER_JWT_ISSUER
  value: {{ . | quote }}
{{- end }}
{{- end }}
- name: THREADKEEPER_MODEL
  value: {{ .Values.service.model | quote }}
- name: THREADKEEPER_LEASE_SECONDS
  value: {{ .Values.service.leaseSeconds | quote }}
- name: THREADKEEPER_WORKERS
  value: {{ .Values.service.workers | quote }}
{{- if not (kindIs "invalid" .Values.service.maxRunsPerOwner) }}
- name: THREADKEEPER_MAX_RUNS_PER_OWNER
  value: {{ .Values.service.maxRunsPerOwner | quote }}
{{- end }}
- name: THREADKEEPER_POOL_MIN_SIZE
  value: {{ .Values.service.pool.minSize | quote }}
- name: THREADKEEPER_POOL_MAX_SIZE
  value: {{ .Values.service.pool.maxSize | quote }}
- name: THREADKEEPER_PREPARED_STATEMENTS
  value: {{ .Values.database.preparedStatements | quote }}
- name: THREADKEEPER_LOG_FORMAT
  value: {{ .Values.service.logFormat | quote }}
- name: THREADKEEPER_REPLICA
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- with .Values.service.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Alerts ------------------------------------------------------------------------------ */}}

{{/* PromQL label matchers of the service's and the reaper's scrape jobs. */}}
{{- define "threadkeeper.serviceJob" -}}
job="{{ include "threadkeeper.fullname" . }}",namespace="{{ .Release.Namespace }}"
{{- end }}

{{- define "threadkeeper.reaperJob" -}}
job="{{ include "threadkeeper.reaperName" . }}-metrics",namespace="{{ .Release.Namespace }}"
{{- end }}

{{- define "threadkeeper.runbook" -}}
{{ .root.Values.alerts.runbookBaseUrl }}#{{ lower .alert }}
{{- end }}

{{- define "threadkeeper.alertLabels" -}}
severity: {{ .severity }}
{{- with .root.Values.alerts.labels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* A byte count for people: "10GiB" when it is a whole number of GiB/MiB/KiB, else "N bytes". */}}
{{- define "threadkeeper.bytes" -}}
{{- $n := . | int64 }}
{{- if and (gt $n 0) (eq (mod $n 1073741824) 0) }}{{ div $n 1073741824 }}GiB
{{- else if and (gt $n 0) (eq (mod $n 1048576) 0) }}{{ div $n 1048576 }}MiB
{{- else if and (gt $n 0) (eq (mod $n 1024) 0) }}{{ div $n 1024 }}KiB
{{- else }}{{ $n }} bytes
{{- end }}
{{- end }}
