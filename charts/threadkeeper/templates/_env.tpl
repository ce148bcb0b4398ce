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
{{- with .Values.service.config }}
- name: THREADKEEPER_CONFIG
  value: {{ . | quote }}
{{- end }}
- name: THREADKEEPER_LEASE_SECONDS
  value: {{ .Values.service.leaseSeconds | quote }}
- name: THREADKEEPER_WORKERS
  value: {{ .Values.service.concurrentRuns | quote }}
- name: THREADKEEPER_BLOB_CACHE_BYTES
  value: {{ .Values.service.blobCacheBytes | int64 | quote }}
- name: THREADKEEPER_SHUTDOWN_SECONDS
  value: {{ include "threadkeeper.shutdownSeconds" . | quote }}
{{- if not (kindIs "invalid" .Values.service.maxRunsPerOwner) }}
- name: THREADKEEPER_MAX_RUNS_PER_OWNER
  value: {{ .Values.service.maxRunsPerOwner | quote }}
{{- end }}
- name: THREADKEEPER_TEMPORARY_THREAD_SECONDS
  value: {{ .Values.service.temporaryThreadSeconds | quote }}
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
