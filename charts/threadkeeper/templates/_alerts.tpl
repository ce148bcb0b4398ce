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
