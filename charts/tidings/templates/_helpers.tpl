{{- define "tidings.fullname" -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tidings.labels" -}}
app.kubernetes.io/name: tidings-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: tidings
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "tidings.selectorLabels" -}}
app.kubernetes.io/name: tidings-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tidings.tlsSecret" -}}
{{- default (printf "%s-webhook-tls" (include "tidings.fullname" .)) .Values.webhook.tls.existingSecret -}}
{{- end -}}
