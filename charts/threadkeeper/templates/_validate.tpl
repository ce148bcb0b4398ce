{{/*
Validation of values that the JSON schema cannot express (rules across several values).

Each "threadkeeper.validate.*" helper renders one message per broken rule, one per line, or
nothing. "threadkeeper.validate" gathers them all and fails once, so a user fixing a values file
sees every problem in one `helm install` instead of one per attempt.
*/}}

{{- define "threadkeeper.validate" -}}
{{- $messages := list -}}
{{- range $check := list "database" "auth" "pool" "shutdown" "renamed" "autoscaling" "alerts" -}}
{{- range $line := splitList "\n" (include (printf "threadkeeper.validate.%s" $check) $) -}}
{{- if $line -}}
{{- $messages = append $messages $line -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if $messages -}}
{{- fail (printf "\nvalues are not valid:\n  - %s" (join "\n  - " $messages)) -}}
{{- end -}}
{{- end -}}

{{- define "threadkeeper.validate.database" -}}
{{- if and (not .Values.database.existingSecret) (not .Values.database.url) }}
set database.existingSecret (a Secret with key `url`) or database.url
{{- end }}
{{- end -}}

{{- define "threadkeeper.validate.auth" -}}
{{- if eq .Values.auth.mode "jwt" }}
{{- if not (or .Values.auth.jwt.existingSecret .Values.auth.jwt.secret .Values.auth.jwt.publicKey) }}
auth.mode=jwt needs auth.jwt.existingSecret, auth.jwt.secret or auth.jwt.publicKey
{{- end }}
{{- if and .Values.auth.jwt.secret .Values.auth.jwt.publicKey }}
set only one of auth.jwt.secret (HS256) and auth.jwt.publicKey (RS256/ES256)
{{- end }}
{{- end }}
{{- end -}}

{{- define "threadkeeper.validate.pool" -}}
{{- if gt (int .Values.service.pool.minSize) (int .Values.service.pool.maxSize) }}
service.pool.minSize must not exceed service.pool.maxSize
{{- end }}
{{- end -}}

{{- define "threadkeeper.validate.shutdown" -}}
{{- if lt (int (include "threadkeeper.shutdownSeconds" .)) 10 }}
service.terminationGracePeriodSeconds must be at least service.preStopSleepSeconds + 15 (10 s for the service's own shutdown, 5 s to exit)
{{- end }}
{{- end -}}

{{- define "threadkeeper.validate.renamed" -}}
{{- if hasKey .Values.service "workers" }}
service.workers was renamed service.concurrentRuns (runs a pod executes at once)
{{- end }}
{{- end -}}

{{- define "threadkeeper.validate.autoscaling" -}}
{{- if and .Values.autoscaling.enabled (not .Values.service.resources.requests.cpu) }}
autoscaling.enabled needs service.resources.requests.cpu (the HPA targets CPU utilisation)
{{- end }}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) }}
autoscaling.minReplicas must not exceed autoscaling.maxReplicas
{{- end }}
{{- end -}}

{{- define "threadkeeper.validate.alerts" -}}
{{- if gt (int .Values.alerts.tableBytesWarning) (int .Values.alerts.tableBytesCritical) }}
alerts.tableBytesWarning must not exceed alerts.tableBytesCritical
{{- end }}
{{- end -}}
