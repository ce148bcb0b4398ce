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
