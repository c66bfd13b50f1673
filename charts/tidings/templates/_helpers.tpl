{{- define "tidings.fullname" -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tidings.labels" -}}
app.kubernetes.io/name: tidings-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: tidings
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "tidings.selectorLabels" -}}
app.kubernetes.io/name: tidings-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tidings.webhookService" -}}
{{- printf "%s-webhook" (include "tidings.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tidings.tlsSecret" -}}
{{- default (printf "%s-webhook-tls" (include "tidings.fullname" .)) .Values.webhook.tls.existingSecret -}}
{{- end -}}

{{- define "tidings.image" -}}
{{- printf "%s:%s" .repository (default .appVersion .tag) -}}
{{- end -}}

{{/*
The webhook's serving certificate when Helm makes it (no existingSecret, no cert-manager), as a
dict {ca, cert, key} of base64 PEM. The Secret of a previous install is reused, so the caBundle
stays consistent across upgrades. Computed once per render and memoised in .Values, because the
Deployment's checksum annotation and webhook.yaml both need the same certificate (genCA is
random on every call).
*/}}
{{- define "tidings.generatedTLS" -}}
{{- if not (hasKey .Values "tidingsGeneratedTLS") -}}
{{- $secretName := include "tidings.tlsSecret" . -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace $secretName -}}
{{- $tls := dict -}}
{{- if and $existing $existing.data (index $existing.data "ca.crt") (index $existing.data "tls.crt") (index $existing.data "tls.key") -}}
{{- $tls = dict "ca" (index $existing.data "ca.crt") "cert" (index $existing.data "tls.crt") "key" (index $existing.data "tls.key") -}}
{{- else -}}
{{- $service := include "tidings.webhookService" . -}}
{{- $ns := .Release.Namespace -}}
{{- $ca := genCA (printf "%s-ca" (include "tidings.fullname" .)) (int .Values.webhook.tls.validityDays) -}}
{{- $dns := list $service (printf "%s.%s" $service $ns) (printf "%s.%s.svc" $service $ns) (printf "%s.%s.svc.cluster.local" $service $ns) -}}
{{- $cert := genSignedCert (printf "%s.%s.svc" $service $ns) nil $dns (int .Values.webhook.tls.validityDays) $ca -}}
{{- $tls = dict "ca" ($ca.Cert | b64enc) "cert" ($cert.Cert | b64enc) "key" ($cert.Key | b64enc) -}}
{{- end -}}
{{- $_ := set .Values "tidingsGeneratedTLS" $tls -}}
{{- end -}}
{{- toJson .Values.tidingsGeneratedTLS -}}
{{- end -}}

{{- define "tidings.tlsMode" -}}
{{- if .Values.webhook.tls.existingSecret -}}existing
{{- else if .Values.webhook.tls.certManager.enabled -}}certManager
{{- else -}}generated
{{- end -}}
{{- end -}}
