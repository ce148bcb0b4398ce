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

{{/*
THREADKEEPER_SHUTDOWN_SECONDS, from the pod's grace period (the one shutdown budget): what is left
after the preStop sleep, less 5 s for the process to exit before the kubelet's SIGKILL.
*/}}
{{- define "threadkeeper.shutdownSeconds" -}}
{{- sub (sub (int .Values.service.terminationGracePeriodSeconds) (int .Values.service.preStopSleepSeconds)) 5 }}
{{- end }}
