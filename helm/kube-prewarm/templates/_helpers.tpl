{{/* Names. Kubernetes names are capped at 63 characters. */}}
{{- define "kube-prewarm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kube-prewarm.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "<fullname>-<suffix>", keeping the suffix when the name is long. */}}
{{- define "kube-prewarm.component" -}}
{{- $root := index . 0 }}{{ $suffix := index . 1 }}
{{- printf "%s-%s" (include "kube-prewarm.fullname" $root | trunc (int (sub 62 (len $suffix))) | trimSuffix "-") $suffix }}
{{- end }}

{{- define "kube-prewarm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "kube-prewarm.labels" -}}
helm.sh/chart: {{ include "kube-prewarm.chart" . }}
{{ include "kube-prewarm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kube-prewarm
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "kube-prewarm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kube-prewarm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component: (list $ "operator"). */}}
{{- define "kube-prewarm.componentLabels" -}}
{{- $root := index . 0 }}
{{- include "kube-prewarm.labels" $root }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "kube-prewarm.componentSelector" -}}
{{- $root := index . 0 }}
{{- include "kube-prewarm.selectorLabels" $root }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "kube-prewarm.operatorName" -}}{{ include "kube-prewarm.component" (list . "operator") }}{{- end }}
{{- define "kube-prewarm.agentName" -}}{{ include "kube-prewarm.component" (list . "agent") }}{{- end }}
{{- define "kube-prewarm.redisName" -}}{{ include "kube-prewarm.component" (list . "redis") }}{{- end }}
{{- define "kube-prewarm.webhooksSecretName" -}}
{{- default (include "kube-prewarm.component" (list . "webhooks")) .Values.webhooks.existingSecret }}
{{- end }}
{{/* The webhook receiver (Deployment, Service, PDB, Ingress share the name). */}}
{{- define "kube-prewarm.webhooksName" -}}{{ include "kube-prewarm.component" (list . "webhooks") }}{{- end }}

{{- define "kube-prewarm.webhooksServiceAccount" -}}
{{- if .Values.webhooks.receiver.serviceAccount.create }}
{{- default (include "kube-prewarm.webhooksName" .) .Values.webhooks.receiver.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.webhooks.receiver.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kube-prewarm.operatorServiceAccount" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "kube-prewarm.operatorName" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kube-prewarm.agentServiceAccount" -}}
{{- if .Values.agent.serviceAccount.create }}
{{- default (include "kube-prewarm.agentName" .) .Values.agent.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.agent.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* image reference: repository, then @digest or :tag (default appVersion). */}}
{{- define "kube-prewarm.imageRef" -}}
{{- $img := index . 0 }}{{ $default := index . 1 }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default $default $img.tag | toString) }}
{{- end }}
{{- end }}

{{- define "kube-prewarm.image" -}}
{{- include "kube-prewarm.imageRef" (list .Values.image .Chart.AppVersion) }}
{{- end }}

{{/*
Redis wiring. The password never appears in a rendered manifest: it reaches the
containers as REDIS_PASSWORD (secretKeyRef) and Kubernetes substitutes $(REDIS_PASSWORD)
into the URL variable that the binaries read. The password must therefore be URL-safe
(the generated one is alphanumeric).
*/}}
{{- define "kube-prewarm.redisPasswordSecret" -}}
{{- if .Values.redis.enabled }}
{{- if .Values.redis.auth.enabled }}
{{- default (include "kube-prewarm.redisName" .) .Values.redis.auth.existingSecret }}
{{- end }}
{{- else }}
{{- .Values.redis.external.passwordSecret }}
{{- end }}
{{- end }}

{{- define "kube-prewarm.redisPasswordKey" -}}
{{- if .Values.redis.enabled }}
{{- if .Values.redis.auth.existingSecret }}{{ .Values.redis.auth.existingSecretKey }}{{ else }}redis-password{{ end }}
{{- else }}
{{- .Values.redis.external.passwordSecretKey }}
{{- end }}
{{- end }}

{{/* The Redis URL as an env value; may contain $(REDIS_PASSWORD). */}}
{{- define "kube-prewarm.redisUrl" -}}
{{- $pw := include "kube-prewarm.redisPasswordSecret" . }}
{{- if .Values.redis.enabled }}
{{- $host := printf "%s.%s.svc:6379" (include "kube-prewarm.redisName" .) .Release.Namespace }}
{{- if $pw }}
{{- printf "redis://:$(REDIS_PASSWORD)@%s/0" $host }}
{{- else }}
{{- printf "redis://%s/0" $host }}
{{- end }}
{{- else }}
{{- $url := .Values.redis.external.url }}
{{- if not (regexMatch "^rediss?://" $url) }}
{{- fail "redis.external.url must be a redis:// or rediss:// URL when redis.enabled is false (or use redis.external.urlSecret)" }}
{{- end }}
{{- if $pw }}
{{- if regexMatch "^rediss?://[^/@]*@" $url }}
{{- regexReplaceAll "^(rediss?://)([^/@:]*)(:[^/@]*)?@" $url "${1}${2}:$(REDIS_PASSWORD)@" }}
{{- else }}
{{- regexReplaceAll "^(rediss?://)" $url "${1}:$(REDIS_PASSWORD)@" }}
{{- end }}
{{- else }}
{{- $url }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Env entries for the Redis URL under the variable name given: (list $ "KUBE_PREWARM_REDIS_URL").
*/}}
{{- define "kube-prewarm.redisEnv" -}}
{{- $root := index . 0 }}{{ $var := index . 1 }}
{{- if and (not $root.Values.redis.enabled) $root.Values.redis.external.urlSecret }}
- name: {{ $var }}
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.redis.external.urlSecret }}
      key: {{ $root.Values.redis.external.urlSecretKey }}
{{- else }}
{{- $pw := include "kube-prewarm.redisPasswordSecret" $root }}
{{- if $pw }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $pw }}
      key: {{ include "kube-prewarm.redisPasswordKey" $root }}
{{- end }}
- name: {{ $var }}
  value: {{ include "kube-prewarm.redisUrl" $root | quote }}
{{- end }}
{{- end }}

{{/* ServiceMonitor: true, false, or "auto" (when the API is served). */}}
{{- define "kube-prewarm.serviceMonitorEnabled" -}}
{{- $v := .Values.monitoring.serviceMonitor.enabled }}
{{- if eq (toString $v) "auto" }}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1/ServiceMonitor" }}true{{ end }}
{{- else if $v }}true{{ end }}
{{- end }}

{{/* Extra env vars from a map, sorted so renders are stable. */}}
{{- define "kube-prewarm.extraEnv" -}}
{{- range $k, $v := . }}
- name: {{ $k }}
  value: {{ $v | toString | quote }}
{{- end }}
{{- end }}

{{/* The operator's rules on ImagePrewarms, pull Secrets and Events (see rbac.yaml). */}}
{{- define "kube-prewarm.operatorPrewarmRules" }}
- apiGroups: [prewarm.kube-prewarm.io]
  resources: [imageprewarms]
  verbs: [get, list, watch, patch, update]
- apiGroups: [prewarm.kube-prewarm.io]
  resources: [imageprewarms/status]
  verbs: [get, patch, update]
- apiGroups: [prewarm.kube-prewarm.io]
  resources: [imageprewarms/finalizers]
  verbs: [update]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end }}

{{/* The hosts.toml installer runs when the mirror is on and install is asked for. */}}
{{- define "kube-prewarm.hostsTomlEnabled" -}}
{{- $a := .Values.agent }}
{{- if and $a.mirror.hostsToml.install (gt (int $a.mirror.port) 0) }}
{{- if not $a.hostNetwork }}
{{- fail "agent.mirror.hostsToml.install needs agent.hostNetwork: containerd reaches the mirror on the node's loopback" }}
{{- end }}
{{- if not $a.mirror.hostsToml.registries }}
{{- fail "agent.mirror.hostsToml.registries is empty: list registries (or _default), or set install: false" }}
{{- end }}true
{{- end }}
{{- end }}

{{/* The mirror URL containerd uses (hosts.toml): loopback unless bound to one address. */}}
{{- define "kube-prewarm.mirrorUrl" -}}
{{- $h := .Values.agent.mirror.host }}
{{- if or (eq $h "0.0.0.0") (eq $h "::") (eq $h "") }}{{ $h = "127.0.0.1" }}{{ end }}
{{- if contains ":" $h }}{{ $h = printf "[%s]" $h }}{{ end }}
{{- printf "http://%s:%v" $h .Values.agent.mirror.port }}
{{- end }}

{{/*
Registries kube-prewarm may contact (KUBE_PREWARM_ALLOWED_REGISTRIES of the operator and the
agents): registries.allowed, or else the registries hosts.toml is written for.
*/}}
{{- define "kube-prewarm.allowedRegistries" -}}
{{- $r := .Values.registries.allowed }}
{{- if not $r }}{{ $r = .Values.agent.mirror.hostsToml.registries }}{{ end }}
{{- join "," $r }}
{{- end }}
