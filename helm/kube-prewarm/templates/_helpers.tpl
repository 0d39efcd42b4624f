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
Redis wiring. Every component connects as its own ACL user (see kube-prewarm.redisAclRules):
the bundled Redis defines `operator`, `agent` and (with webhooks.enabled) `webhooks`; an
external Redis may do the same (redis.external.users). A password never appears in a
rendered manifest: it reaches the container as REDIS_PASSWORD (secretKeyRef) and Kubernetes
substitutes $(REDIS_PASSWORD) into the URL variable that the binaries read, so it must be
URL-safe (the generated ones are alphanumeric).
*/}}

{{/* Components with a Redis user, in order. */}}
{{- define "kube-prewarm.redisRoles" -}}
operator agent{{ if .Values.webhooks.enabled }} webhooks{{ end }}
{{- end }}

{{/*
ACL rules of a component's user (after `on >password`): `resetkeys resetchannels`, the key
patterns, the commands, and `( ... )` selectors. Key names are oci/src/job-contract.ts's
QUEUE_PREFIX `kprw`: per-node BullMQ queues `kprw:node.<node>:*`, the peer directory
`kprw:holders:<digest hex>`, the push stream `kprw:operator:push-events` (and its cursor),
the webhook dedup keys `kprw:webhook:dedup:*`, the orphans set `kprw:orphans`.
- operator: every kube-prewarm key, every command but @dangerous ones (CONFIG, KEYS,
  FLUSHALL, DEBUG, MONITOR, ACL, CLIENT KILL/LIST, MODULE, REPLICAOF, SHUTDOWN, SAVE, ...),
  plus INFO (ioredis' ready check).
- agent: the node queues (BullMQ's Worker: its scripts, the blocking BZPOPMIN on the queue's
  marker, SCAN over the queue's job hashes for pins) and, in a selector, the peer
  directory's set commands. Every command any BullMQ script calls is listed, because a
  script runs with its caller's permissions (test/system/redis-acl.test.ts reads them from
  node_modules/bullmq). Redis cannot tie a user to "its own" node without one user per node
  (docs/security.md, Redis): agents check each job instead.
- webhooks: SET/DEL on the dedup keys, and write-only XADD on the push stream.
*/}}
{{- define "kube-prewarm.redisAclRules" -}}
{{- $script := "+del +exists +get +hdel +hexists +hget +hgetall +hincrby +hlen +hmget +hmset +hscan +hset +incr +incrby +lindex +llen +lpop +lpos +lpush +lrange +lrem +lset +ltrim +persist +pexpire +pexpireat +pttl +rename +rpop +rpoplpush +rpush +sadd +scard +set +sismember +smembers +srem +sscan +time +type +unlink +xadd +xdel +xlen +xrange +xread +xtrim +zadd +zcard +zcount +zlexcount +zpopmin +zrange +zrangebylex +zrangebyscore +zrem +zremrangebyrank +zremrangebyscore +zrevrange +zrevrangebyscore +zscore" }}
{{- if eq . "operator" -}}
resetkeys resetchannels ~kprw:* +@all -@dangerous +info
{{- else if eq . "agent" -}}
resetkeys resetchannels ~kprw:node.* -@all +ping +info +select +client|setname +eval +evalsha +multi +exec +discard +bzpopmin +scan {{ $script }} (~kprw:holders:* +smembers +sadd +srem +expire)
{{- else if eq . "webhooks" -}}
resetkeys resetchannels ~kprw:webhook:dedup:* -@all +ping +select +set +del (%W~kprw:operator:push-events +xadd)
{{- else }}
{{- fail (printf "no Redis ACL rules for %q" .) }}
{{- end }}
{{- end }}

{{/* ACL rules as redis-server arguments: split on spaces, a `( ... )` selector kept whole. */}}
{{- define "kube-prewarm.redisAclArgs" -}}
{{- range regexFindAll "\\([^)]*\\)|[^ ]+" (include "kube-prewarm.redisAclRules" .) -1 }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/* The bundled Redis's ACL user name of a component. */}}
{{- define "kube-prewarm.redisBundledUser" -}}{{ . }}{{- end }}

{{/* Secret holding the Redis passwords (bundled or external); empty: no password. */}}
{{- define "kube-prewarm.redisPasswordSecret" -}}
{{- if .Values.redis.enabled }}
{{- if .Values.redis.auth.enabled }}
{{- default (include "kube-prewarm.redisName" .) .Values.redis.auth.existingSecret }}
{{- end }}
{{- else }}
{{- .Values.redis.external.passwordSecret }}
{{- end }}
{{- end }}

{{/* Key of a component's password in that Secret: (list $ "agent"). */}}
{{- define "kube-prewarm.redisPasswordKey" -}}
{{- $root := index . 0 }}{{ $role := index . 1 }}
{{- if $root.Values.redis.enabled }}
{{- if $root.Values.redis.auth.existingSecret }}
{{- index $root.Values.redis.auth.existingSecretKeys $role }}
{{- else }}
{{- printf "%s-password" $role }}
{{- end }}
{{- else }}
{{- $u := index $root.Values.redis.external.users $role }}
{{- default $root.Values.redis.external.passwordSecretKey $u.passwordSecretKey }}
{{- end }}
{{- end }}

{{/* A component's Redis URL as an env value; may contain $(REDIS_PASSWORD): (list $ "agent"). */}}
{{- define "kube-prewarm.redisUrl" -}}
{{- $root := index . 0 }}{{ $role := index . 1 }}
{{- $pw := include "kube-prewarm.redisPasswordSecret" $root }}
{{- if $root.Values.redis.enabled }}
{{- $host := printf "%s.%s.svc:6379" (include "kube-prewarm.redisName" $root) $root.Release.Namespace }}
{{- if $pw }}
{{- printf "redis://%s:$(REDIS_PASSWORD)@%s/0" (include "kube-prewarm.redisBundledUser" $role) $host }}
{{- else }}
{{- printf "redis://%s/0" $host }}
{{- end }}
{{- else }}
{{- $url := $root.Values.redis.external.url }}
{{- if not (regexMatch "^rediss?://" $url) }}
{{- fail "redis.external.url must be a redis:// or rediss:// URL when redis.enabled is false (or use redis.external.urlSecret)" }}
{{- end }}
{{- $user := (index $root.Values.redis.external.users $role).username }}
{{- if $user }}
{{- /* The component's own ACL user replaces any user the URL names. */}}
{{- $url = regexReplaceAll "^(rediss?://)[^/@]*@" $url "${1}" }}
{{- $url = regexReplaceAll "^(rediss?://)" $url (printf "${1}%s@" $user) }}
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
Env entries connecting a component to Redis under the variable name given, as its own
user, plus the TLS files of an external Redis: (list $ "KUBE_PREWARM_REDIS_URL" "agent").
*/}}
{{- define "kube-prewarm.redisEnv" -}}
{{- $root := index . 0 }}{{ $var := index . 1 }}{{ $role := index . 2 }}
{{- $x := $root.Values.redis.external }}
{{- if and (not $root.Values.redis.enabled) $x.urlSecret }}
- name: {{ $var }}
  valueFrom:
    secretKeyRef:
      name: {{ $x.urlSecret }}
      key: {{ default $x.urlSecretKey (index $x.users $role).urlSecretKey }}
{{- else }}
{{- $pw := include "kube-prewarm.redisPasswordSecret" $root }}
{{- if $pw }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $pw }}
      key: {{ include "kube-prewarm.redisPasswordKey" (list $root $role) }}
{{- end }}
- name: {{ $var }}
  value: {{ include "kube-prewarm.redisUrl" (list $root $role) | quote }}
{{- end }}
{{- if include "kube-prewarm.redisTlsCa" $root }}
- name: KUBE_PREWARM_REDIS_TLS_CA_FILE
  value: /etc/kube-prewarm/redis-tls/ca/{{ $x.tls.caKey }}
{{- end }}
{{- if and (not $root.Values.redis.enabled) $x.tls.clientCertSecret }}
- name: KUBE_PREWARM_REDIS_TLS_CERT_FILE
  value: /etc/kube-prewarm/redis-tls/client/tls.crt
- name: KUBE_PREWARM_REDIS_TLS_KEY_FILE
  value: /etc/kube-prewarm/redis-tls/client/tls.key
{{- end }}
{{- end }}

{{/* "true" when an external Redis's CA comes from a Secret or ConfigMap; fails on misuse. */}}
{{- define "kube-prewarm.redisTlsCa" -}}
{{- $r := .Values.redis }}{{ $t := $r.external.tls }}
{{- if or $t.caSecret $t.caConfigMap $t.clientCertSecret }}
{{- if $r.enabled }}
{{- fail "redis.external.tls is for an external Redis (redis.enabled=false)" }}
{{- end }}
{{- if and $t.caSecret $t.caConfigMap }}
{{- fail "redis.external.tls: set caSecret or caConfigMap, not both" }}
{{- end }}
{{- if and $r.external.url (not (hasPrefix "rediss://" $r.external.url)) }}
{{- fail "redis.external.tls needs a rediss:// URL (redis.external.url)" }}
{{- end }}
{{- end }}
{{- if and (not $r.enabled) (or $t.caSecret $t.caConfigMap) }}true{{ end }}
{{- end }}

{{/* volumeMounts for the external Redis's CA and client certificate (may be empty). */}}
{{- define "kube-prewarm.redisTlsVolumeMounts" -}}
{{- if include "kube-prewarm.redisTlsCa" . }}
- name: redis-tls-ca
  mountPath: /etc/kube-prewarm/redis-tls/ca
  readOnly: true
{{- end }}
{{- if and (not .Values.redis.enabled) .Values.redis.external.tls.clientCertSecret }}
- name: redis-tls-client
  mountPath: /etc/kube-prewarm/redis-tls/client
  readOnly: true
{{- end }}
{{- end }}

{{/* volumes for kube-prewarm.redisTlsVolumeMounts (may be empty). */}}
{{- define "kube-prewarm.redisTlsVolumes" -}}
{{- $t := .Values.redis.external.tls }}
{{- if include "kube-prewarm.redisTlsCa" . }}
- name: redis-tls-ca
  {{- if $t.caSecret }}
  secret:
    secretName: {{ $t.caSecret }}
    defaultMode: 0444
  {{- else }}
  configMap:
    name: {{ $t.caConfigMap }}
    defaultMode: 0444
  {{- end }}
    items:
      - key: {{ $t.caKey }}
        path: {{ $t.caKey }}
{{- end }}
{{- if and (not .Values.redis.enabled) $t.clientCertSecret }}
- name: redis-tls-client
  secret:
    secretName: {{ $t.clientCertSecret }}
    defaultMode: 0440
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- end }}
{{- end }}

{{/*
maxmemory of the bundled Redis in bytes: redis.maxmemory, or 70% of
redis.resources.limits.memory (room for the AOF rewrite's copy-on-write, client buffers and
allocator overhead), always below the limit, so a full Redis refuses writes (noeviction)
instead of being OOM-killed.
*/}}
{{- define "kube-prewarm.redisMaxmemory" -}}
{{- $r := .Values.redis }}
{{- $limit := dig "limits" "memory" "" $r.resources }}
{{- $limitBytes := 0 }}
{{- if $limit }}{{ $limitBytes = include "kube-prewarm.bytes" (list $limit "redis.resources.limits.memory") | int64 }}{{ end }}
{{- $max := 0 }}
{{- if $r.maxmemory }}
{{- $max = include "kube-prewarm.bytes" (list $r.maxmemory "redis.maxmemory") | int64 }}
{{- else if $limitBytes }}
{{- $max = div (mul $limitBytes 70) 100 }}
{{- else }}
{{- fail "redis: set resources.limits.memory (maxmemory becomes 70% of it) or redis.maxmemory" }}
{{- end }}
{{- if and $limitBytes (ge $max $limitBytes) }}
{{- fail (printf "redis.maxmemory (%d bytes) must be below redis.resources.limits.memory (%d bytes): Redis must refuse writes before the kernel kills it" $max $limitBytes) }}
{{- end }}
{{- $max }}
{{- end }}

{{/* A Kubernetes quantity in bytes (integers with Ki..Ei, k..E suffixes): (list "512Mi" "value.path"). */}}
{{- define "kube-prewarm.bytes" -}}
{{- $q := toString (index . 0) }}{{ $what := index . 1 }}
{{- $m := regexFindAll "^([0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$" $q -1 }}
{{- if not $m }}
{{- fail (printf "%s: %q is not a whole-number quantity (e.g. 512Mi, 1Gi, 536870912)" $what $q) }}
{{- end }}
{{- $n := regexReplaceAll "[^0-9]" $q "" | int64 }}
{{- $unit := regexReplaceAll "^[0-9]+" $q "" }}
{{- $mult := dict "" 1 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "P" 1000000000000000 "E" 1000000000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "Pi" 1125899906842624 "Ei" 1152921504606846976 }}
{{- mul $n (index $mult $unit) }}
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
