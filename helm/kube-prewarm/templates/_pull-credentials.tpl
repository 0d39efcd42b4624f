{{/*
Per-ImagePrewarm pull credentials (agent.rbac.readPullSecrets): the operator copies the
credentials an ImagePrewarm's images need into short-lived Secrets of one namespace that
holds nothing else, and each job names its copy; agents may `get` Secrets there only.
*/}}
{{- define "kube-prewarm.pullCredentialsNamespace" -}}
{{- $pc := .Values.agent.rbac.pullCredentials }}
{{- if $pc.namespace }}
{{- if eq $pc.namespace .Release.Namespace }}
{{- fail "agent.rbac.pullCredentials.namespace must not be the release namespace: agents may read every Secret there (Redis password, peer token)" }}
{{- end }}
{{- $pc.namespace }}
{{- else }}
{{- printf "%s-pull-credentials" .Release.Namespace | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Whether agents use per-job pull credentials: the roles, the namespace and the token. */}}
{{- define "kube-prewarm.pullCredentialsEnabled" -}}
{{- if and .Values.rbac.create .Values.agent.rbac.readPullSecrets }}true{{ end }}
{{- end }}

{{/* The Secret holding the peer token (agent.peers): yours, or the one the chart renders. */}}
{{- define "kube-prewarm.peersSecretName" -}}
{{- default (include "kube-prewarm.component" (list . "peers")) .Values.agent.peers.existingSecret }}
{{- end }}
