{{/*
Keyway chart helpers.

Public named templates (for your own chart, sidecar mode):
  keyway.sidecar         the Keyway container, an entry for the pod's initContainers (a native
                         sidecar: restartPolicy Always)
  keyway.sidecarVolume   the config volume (and the Secret volumes of auth.*), entries for the
                         pod's volumes
  keyway.configMap       the ConfigMap manifest (rendered by this chart itself when it is a
                         dependency; include it yourself only if you copy these templates)
  keyway.certificate     the cert-manager Certificate of tls.certManager, or nothing (rendered by
                         this chart itself; include it only if you copy these templates)
Each takes the root context ("."). The Keyway values are .Values.keyway when that key exists
(this chart as a dependency named keyway), otherwise .Values. A dependency under another alias
passes a dict instead: (dict "Values" .Values.myalias "Release" .Release "Chart" .Chart).

Internal templates take a "kctx": a dict with Values (the Keyway values), Release, and
AppVersion (Keyway's appVersion, the default image tag).

Names do not depend on .Chart, so the parent chart and this chart compute the same ConfigMap
name from the same values.
*/}}

{{/* The Keyway values seen from the root context (see above). */}}
{{- define "keyway.kctx" -}}
{{- $v := .Values -}}
{{- if hasKey .Values "keyway" -}}
{{- $v = .Values.keyway -}}
{{- end -}}
{{- $app := "" -}}
{{- if and .Chart (eq .Chart.Name "keyway") -}}
{{- $app = .Chart.AppVersion -}}
{{- else if and .Subcharts (hasKey .Subcharts "keyway") -}}
{{- $app = (index .Subcharts "keyway").Chart.AppVersion -}}
{{- end -}}
{{- dict "Values" $v "Release" .Release "AppVersion" $app | toJson -}}
{{- end -}}

{{- define "keyway.name" -}}
{{- default "keyway" .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "keyway.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "keyway.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The ConfigMap holding keyway.toml. */}}
{{- define "keyway.configMapName" -}}
{{- printf "%s-config" (include "keyway.fullname" . | trunc 56 | trimSuffix "-") -}}
{{- end -}}

{{- define "keyway.version" -}}
{{- .Values.image.tag | default .AppVersion | default "latest" -}}
{{- end -}}

{{- define "keyway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "keyway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "keyway.labels" -}}
{{ include "keyway.selectorLabels" . }}
app.kubernetes.io/version: {{ include "keyway.version" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/component: proxy
app.kubernetes.io/part-of: keyway
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "keyway.image" -}}
{{- $img := .Values.image -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (include "keyway.version" .) -}}
{{- end -}}
{{- end -}}

{{/*
A TOML scalar from a values scalar: strings as JSON strings (a JSON string is a valid TOML basic
string), booleans as is, whole numbers as integers (values arrive as float64: 512 MiB would
print as 5.36870912e+08), other numbers as floats.
*/}}
{{- define "keyway.tomlScalar" -}}
{{- $x := . -}}
{{- if kindIs "string" $x -}}
{{- toJson $x -}}
{{- else if kindIs "bool" $x -}}
{{- ternary "true" "false" $x -}}
{{- else if or (kindIs "float64" $x) (kindIs "int" $x) (kindIs "int64" $x) -}}
{{- if eq (float64 $x) (float64 (int64 $x)) -}}
{{- int64 $x -}}
{{- else -}}
{{- $x -}}
{{- end -}}
{{- else -}}
{{- fail (printf "keyway: cannot render %v (%s) as a TOML scalar" $x (kindOf $x)) -}}
{{- end -}}
{{- end -}}

{{/* Duration string ("10s", "1500ms", "2m", "1h") to whole seconds, rounded up; "" if unknown. */}}
{{- define "keyway.durationSeconds" -}}
{{- $d := toString . | trim -}}
{{- if regexMatch "^[0-9]+ms$" $d -}}
{{- div (add (trimSuffix "ms" $d | int64) 999) 1000 -}}
{{- else if regexMatch "^[0-9]+s$" $d -}}
{{- trimSuffix "s" $d | int64 -}}
{{- else if regexMatch "^[0-9]+m$" $d -}}
{{- mul (trimSuffix "m" $d | int64) 60 -}}
{{- else if regexMatch "^[0-9]+h$" $d -}}
{{- mul (trimSuffix "h" $d | int64) 3600 -}}
{{- end -}}
{{- end -}}

{{/* "sidecar" or "standalone". */}}
{{- define "keyway.mode" -}}
{{- $m := .Values.mode | default "standalone" -}}
{{- if not (has $m (list "standalone" "sidecar")) -}}
{{- fail (printf "keyway: mode must be standalone or sidecar, got %q" $m) -}}
{{- end -}}
{{- $m -}}
{{- end -}}

{{- define "keyway.listen" -}}
{{- if .Values.config.listen -}}
{{- .Values.config.listen -}}
{{- else if eq (include "keyway.mode" .) "sidecar" -}}
{{- printf "127.0.0.1:%d" (int .Values.ports.client) -}}
{{- else -}}
{{- printf "0.0.0.0:%d" (int .Values.ports.client) -}}
{{- end -}}
{{- end -}}

{{- define "keyway.admin" -}}
{{- .Values.config.admin | default (printf "0.0.0.0:%d" (int .Values.ports.admin)) -}}
{{- end -}}

{{/* Where TLS clients connect: tls.listen, else by mode on ports.tls. */}}
{{- define "keyway.tlsListen" -}}
{{- if .Values.tls.listen -}}
{{- .Values.tls.listen -}}
{{- else if eq (include "keyway.mode" .) "sidecar" -}}
{{- printf "127.0.0.1:%d" (int .Values.ports.tls) -}}
{{- else -}}
{{- printf "0.0.0.0:%d" (int .Values.ports.tls) -}}
{{- end -}}
{{- end -}}

{{/*
The Secret holding the TLS listener's certificate: tls.existingSecret, else (with
tls.certManager.enabled) <fullname>-tls, the Secret the Certificate makes. "" without TLS.
*/}}
{{- define "keyway.tlsSecretName" -}}
{{- if .Values.tls.enabled -}}
{{- if .Values.tls.existingSecret -}}
{{- .Values.tls.existingSecret -}}
{{- else if .Values.tls.certManager.enabled -}}
{{- printf "%s-tls" (include "keyway.fullname" . | trunc 59 | trimSuffix "-") -}}
{{- else -}}
{{- fail "keyway: tls.enabled needs tls.existingSecret (a kubernetes.io/tls Secret: tls.crt, tls.key, ca.crt) or tls.certManager.enabled" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
One user's state after its rules, as Keyway computes it: "on" or "off", then "nopass" or "pass",
e.g. "on pass". Rules are applied in order: on/off, nopass/resetpass, and reset (off, resetpass).
Fails on a password or hash in the rules (>pw, <pw, #hash, !hash): they would land in the
ConfigMap.
*/}}
{{- define "keyway.userState" -}}
{{- $name := .name -}}
{{- $on := false -}}
{{- $nopass := false -}}
{{- range $r := splitList " " (.rules | default "" | replace "\t" " " | replace "\n" " ") -}}
{{- $l := lower $r -}}
{{- if eq $l "on" }}{{ $on = true }}{{ end -}}
{{- if eq $l "off" }}{{ $on = false }}{{ end -}}
{{- if eq $l "nopass" }}{{ $nopass = true }}{{ end -}}
{{- if eq $l "resetpass" }}{{ $nopass = false }}{{ end -}}
{{- if eq $l "reset" }}{{ $on = false }}{{ $nopass = false }}{{ end -}}
{{- if regexMatch "^[#!<>]" $r -}}
{{- fail (printf "keyway: users: user %q has a password or a hash in its rules (%s...): they would be written into the ConfigMap; put the password in the Secret of users.existingSecret instead" $name (substr 0 1 $r)) -}}
{{- end -}}
{{- end -}}
{{- printf "%s %s" (ternary "on" "off" $on) (ternary "nopass" "pass" $nopass) -}}
{{- end -}}

{{/*
Whether clients must authenticate ("true" or ""), as Keyway decides it: there are users, and no
user named default is on with nopass. Keyway then lifts protected mode by itself.
*/}}
{{- define "keyway.authRequired" -}}
{{- $users := .Values.users.list | default list -}}
{{- $open := false -}}
{{- range $u := $users -}}
{{- if and (eq $u.name "default") (eq (include "keyway.userState" $u) "on nopass") -}}
{{- $open = true -}}
{{- end -}}
{{- end -}}
{{- if and $users (not $open) }}true{{ end -}}
{{- end -}}

{{/* Whether TLS clients must present a certificate that tls.clientAuth's CA verified. */}}
{{- define "keyway.tlsClientAuth" -}}
{{- if and .Values.tls.enabled .Values.tls.clientAuth.enabled }}true{{ end -}}
{{- end -}}

{{/* A Secret's entry name, checked: Kubernetes allows [-._a-zA-Z0-9] only. */}}
{{- define "keyway.secretKey" -}}
{{- if not (regexMatch "^[-._a-zA-Z0-9]+$" .key) -}}
{{- fail (printf "keyway: %s: %q is not a valid Secret key ([-._a-zA-Z0-9]+)" .what .key) -}}
{{- end -}}
{{- .key -}}
{{- end -}}

{{/*
keyway.toml. Only keys with a value are written: a null key keeps Keyway's built-in default, so
the file stays valid for a Keyway that does not know that key yet.
*/}}
{{- define "keyway.toml" -}}
{{- $c := .Values.config -}}
{{- $pool := $c.pool -}}
# Rendered by the keyway Helm chart (release {{ .Release.Name }}). Keys: config/keyway.toml.
# Edit the chart values, not this file: Keyway reloads it when the ConfigMap changes.
listen = {{ include "keyway.listen" . | toJson }}
admin = {{ include "keyway.admin" . | toJson }}
{{- $dir := trimSuffix "/" .Values.secretsDir }}
{{- if not (kindIs "invalid" $c.protected_mode) }}
protected_mode = {{ $c.protected_mode }}
{{- else if eq (include "keyway.mode" .) "sidecar" }}
{{- else if or (include "keyway.authRequired" .) (include "keyway.tlsClientAuth" .) }}
# protected_mode stays on (Keyway's default): clients authenticate ([[users]] or a client
# certificate), which admits them from other pods; unauthenticated ones stay on loopback.
{{- else }}
# Standalone: clients are other pods and none authenticates (restrict them with networkPolicy).
protected_mode = false
{{- end }}
{{- if .Values.auth.adminToken.existingSecret }}
admin_token_file = {{ printf "%s/admin-token/%s" $dir .Values.auth.adminToken.key | toJson }}
{{- end }}
{{- if .Values.tls.enabled }}
tls_listen = {{ include "keyway.tlsListen" . | toJson }}
{{- end }}
{{- with $c.refused_commands }}
refused_commands = {{ toJson . }}
{{- end }}
{{- if not (kindIs "invalid" $c.drain_timeout) }}
drain_timeout = {{ include "keyway.tomlScalar" $c.drain_timeout }}
{{- end }}
{{- if not (kindIs "invalid" $c.threads) }}
threads = {{ include "keyway.tomlScalar" $c.threads }}
{{- end }}

[pool]
{{- range $k := list "replicas" "hash_tag" "connections" "timeout" "read" "write" "warmup" }}
{{- $x := index $pool $k }}
{{- if not (kindIs "invalid" $x) }}
{{ $k }} = {{ include "keyway.tomlScalar" $x }}
{{- end }}
{{- end }}
{{- with .Values.auth.server.username }}
username = {{ . | toJson }}
{{- end }}
{{- if .Values.auth.server.existingSecret }}
password_file = {{ printf "%s/server-password/%s" $dir .Values.auth.server.key | toJson }}
{{- end }}
{{- with $pool.health }}

[pool.health]
{{- range $k, $x := . }}
{{- if not (kindIs "invalid" $x) }}
{{ $k }} = {{ include "keyway.tomlScalar" $x }}
{{- end }}
{{- end }}
{{- end }}
{{- with $pool.two_phase }}

[pool.two_phase]
{{- range $k, $x := . }}
{{- if not (kindIs "invalid" $x) }}
{{ $k }} = {{ include "keyway.tomlScalar" $x }}
{{- end }}
{{- end }}
{{- end }}
{{- with .Values.poolTls }}
{{- if .enabled }}

[pool.tls]
{{- if .insecureSkipVerify }}
# poolTls.insecureSkipVerify: the servers' certificates are NOT verified (Keyway logs a warning).
insecure_skip_verify = true
{{- else if not .existingSecret }}
{{- fail "keyway: poolTls.enabled needs poolTls.existingSecret (the CA the servers' certificates chain to), or poolTls.insecureSkipVerify: true to verify nothing" }}
{{- else }}
ca_file = {{ printf "%s/pool-tls/%s" $dir (include "keyway.secretKey" (dict "what" "poolTls.caKey" "key" .caKey)) | toJson }}
{{- end }}
{{- with .serverName }}
server_name = {{ . | toJson }}
{{- end }}
{{- if .clientCertificate }}
{{- if not .existingSecret }}
{{- fail "keyway: poolTls.clientCertificate needs poolTls.existingSecret (tls.crt and tls.key)" }}
{{- end }}
cert_file = {{ printf "%s/pool-tls/tls.crt" $dir | toJson }}
key_file = {{ printf "%s/pool-tls/tls.key" $dir | toJson }}
{{- end }}
{{- end }}
{{- end }}
{{- if not $pool.servers }}
{{- fail "keyway: config.pool.servers is empty: list at least one redis-server (name, addr)" }}
{{- end }}
{{- range $s := $pool.servers }}

[[pool.servers]]
name = {{ required "keyway: every config.pool.servers entry needs a name" $s.name | toString | toJson }}
addr = {{ required "keyway: every config.pool.servers entry needs an addr" $s.addr | toString | toJson }}
{{- if not (kindIs "invalid" $s.weight) }}
weight = {{ include "keyway.tomlScalar" $s.weight }}
{{- end }}
{{- with $s.tls_server_name }}
tls_server_name = {{ . | toString | toJson }}
{{- end }}
{{- end }}
{{- $limits := dict }}
{{- range $k, $x := $c.limits }}
{{- if not (kindIs "invalid" $x) }}
{{- $_ := set $limits $k $x }}
{{- end }}
{{- end }}
{{- with $limits }}

[limits]
{{- range $k, $x := . }}
{{ $k }} = {{ include "keyway.tomlScalar" $x }}
{{- end }}
{{- end }}
{{- if .Values.tls.enabled }}

[tls]
cert_file = {{ printf "%s/tls/tls.crt" $dir | toJson }}
key_file = {{ printf "%s/tls/tls.key" $dir | toJson }}
{{- if include "keyway.tlsClientAuth" . }}
{{- $key := include "keyway.secretKey" (dict "what" "tls.clientAuth.key" "key" .Values.tls.clientAuth.key) }}
{{- if .Values.tls.clientAuth.existingSecret }}
client_ca_file = {{ printf "%s/tls-client-ca/%s" $dir $key | toJson }}
{{- else }}
client_ca_file = {{ printf "%s/tls/%s" $dir $key | toJson }}
{{- end }}
{{- end }}
{{- with .Values.tls.handshakeTimeout }}
handshake_timeout = {{ . | toJson }}
{{- end }}
{{- end }}
{{- range $u := .Values.users.list }}

[[users]]
name = {{ required "keyway: every users.list entry needs a name" $u.name | toString | toJson }}
{{- if eq (include "keyway.userState" $u) "on pass" }}
{{- if not $.Values.users.existingSecret }}
{{- fail (printf "keyway: user %q needs a password: set users.existingSecret (a Secret with an entry per user holding its password, or #<sha256> lines), or give it nopass or off in its rules" $u.name) }}
{{- end }}
password_file = {{ printf "%s/users/%s" $dir (include "keyway.secretKey" (dict "what" (printf "users.list %s key (default: the user's name)" $u.name) "key" ($u.key | default $u.name))) | toJson }}
{{- end }}
{{- $rules := $u.rules | default "" }}
{{- if regexMatch `^[^'\x00-\x1f\x7f]*$` $rules }}
rules = '{{ $rules }}'
{{- else }}
rules = {{ $rules | toJson }}
{{- end }}
{{- end }}
{{ end -}}

{{/* Fails when the grace period cannot cover the preStop sleep plus the drain. */}}
{{- define "keyway.checkGrace" -}}
{{- $drain := include "keyway.durationSeconds" (.Values.config.drain_timeout | default "10s") -}}
{{- if $drain -}}
{{- $need := add (int64 $drain) (int64 .preStop) -}}
{{- if le (int64 .Values.terminationGracePeriodSeconds) $need -}}
{{- fail (printf "keyway: terminationGracePeriodSeconds (%d) must exceed the preStop sleep (%d s) plus config.drain_timeout (%d s)" (int64 .Values.terminationGracePeriodSeconds) (int64 .preStop) (int64 $drain)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The Keyway container, shared by both modes. kctx plus:
  sidecar    true for the native sidecar (restartPolicy Always)
  preStop    seconds of preStop sleep, 0 for none
*/}}
{{- define "keyway.container" -}}
{{- $v := .Values -}}
name: {{ ternary $v.sidecar.containerName "keyway" .sidecar }}
image: {{ include "keyway.image" . | quote }}
imagePullPolicy: {{ $v.image.pullPolicy }}
{{- if .sidecar }}
restartPolicy: Always
{{- end }}
command: ["/usr/local/bin/keyway"]
args:
  - serve
  - --config
  - {{ printf "%s/keyway.toml" (trimSuffix "/" $v.configDir) | quote }}
  - --log-format
  - {{ $v.logFormat | quote }}
env:
  - name: RUST_LOG
    value: {{ $v.logLevel | quote }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
ports:
  - name: keyway
    containerPort: {{ int $v.ports.client }}
    protocol: TCP
  - name: keyway-admin
    containerPort: {{ int $v.ports.admin }}
    protocol: TCP
{{- if $v.tls.enabled }}
  - name: keyway-tls
    containerPort: {{ int $v.ports.tls }}
    protocol: TCP
{{- end }}
{{- with $v.probes.startup }}
{{- if .enabled }}
startupProbe:
  httpGet:
    path: /healthz
    port: keyway-admin
  periodSeconds: {{ int .periodSeconds }}
  failureThreshold: {{ int .failureThreshold }}
  timeoutSeconds: {{ int .timeoutSeconds }}
{{- end }}
{{- end }}
{{- with $v.probes.liveness }}
{{- if .enabled }}
livenessProbe:
  httpGet:
    path: /healthz
    port: keyway-admin
  periodSeconds: {{ int .periodSeconds }}
  failureThreshold: {{ int .failureThreshold }}
  timeoutSeconds: {{ int .timeoutSeconds }}
{{- end }}
{{- end }}
{{- with $v.probes.readiness }}
{{- if .enabled }}
readinessProbe:
  httpGet:
    path: /readyz
    port: keyway-admin
  periodSeconds: {{ int .periodSeconds }}
  failureThreshold: {{ int .failureThreshold }}
  timeoutSeconds: {{ int .timeoutSeconds }}
{{- end }}
{{- end }}
{{- if gt (int .preStop) 0 }}
lifecycle:
  preStop:
    sleep:
      seconds: {{ int .preStop }}
{{- end }}
{{- with $v.resources }}
resources:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.securityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumeMounts:
  # The whole directory, never a subPath: Keyway watches the directory and reloads when
  # Kubernetes swaps the ConfigMap's ..data symlink; a subPath mount would never change.
  - name: {{ ternary $v.sidecar.volumeName "config" .sidecar }}
    mountPath: {{ $v.configDir | quote }}
    readOnly: true
  {{- range $s := include "keyway.secrets" . | fromJsonArray }}
  - name: {{ $s.volume }}
    mountPath: {{ $s.dir | quote }}
    readOnly: true
  {{- end }}
{{- end -}}

{{/*
The Secrets mounted for Keyway, as a JSON array of {volume, dir, secret}: the admin token, the
servers' password, the client users' passwords, the TLS listener's certificate (and a separate
client CA), and the servers' CA (and Keyway's client certificate), each when it is in use. Each is
a whole-directory mount (never subPath): Keyway re-reads these files, so a rotated Secret or a
cert-manager renewal reaches it without a restart. kctx plus sidecar (volume names are
prefixed with sidecar.volumeName in sidecar mode, to stay apart from the pod's own).
*/}}
{{- define "keyway.secrets" -}}
{{- $v := .Values -}}
{{- $prefix := ternary (printf "%s-" $v.sidecar.volumeName) "keyway-" (.sidecar | default false) -}}
{{- $dir := trimSuffix "/" $v.secretsDir -}}
{{- if eq $dir (trimSuffix "/" $v.configDir) -}}
{{- fail "keyway: secretsDir must differ from configDir" -}}
{{- end -}}
{{- $out := list -}}
{{- with $v.auth.adminToken.existingSecret -}}
{{- $out = append $out (dict "volume" (printf "%sadmin-token" $prefix) "dir" (printf "%s/admin-token" $dir) "secret" .) -}}
{{- end -}}
{{- with $v.auth.server.existingSecret -}}
{{- $out = append $out (dict "volume" (printf "%sserver-password" $prefix) "dir" (printf "%s/server-password" $dir) "secret" .) -}}
{{- end -}}
{{- if and $v.users.existingSecret $v.users.list -}}
{{- $out = append $out (dict "volume" (printf "%susers" $prefix) "dir" (printf "%s/users" $dir) "secret" $v.users.existingSecret) -}}
{{- end -}}
{{- with include "keyway.tlsSecretName" . -}}
{{- $out = append $out (dict "volume" (printf "%stls" $prefix) "dir" (printf "%s/tls" $dir) "secret" .) -}}
{{- end -}}
{{- if and (include "keyway.tlsClientAuth" .) $v.tls.clientAuth.existingSecret -}}
{{- $out = append $out (dict "volume" (printf "%stls-client-ca" $prefix) "dir" (printf "%s/tls-client-ca" $dir) "secret" $v.tls.clientAuth.existingSecret) -}}
{{- end -}}
{{- if and $v.poolTls.enabled $v.poolTls.existingSecret -}}
{{- $out = append $out (dict "volume" (printf "%spool-tls" $prefix) "dir" (printf "%s/pool-tls" $dir) "secret" $v.poolTls.existingSecret) -}}
{{- end -}}
{{- $out | toJson -}}
{{- end -}}

{{/* The Secret volumes of keyway.secrets, as entries of a pod's volumes. */}}
{{- define "keyway.secretVolumes" -}}
{{- range $s := include "keyway.secrets" . | fromJsonArray }}
- name: {{ $s.volume }}
  secret:
    secretName: {{ $s.secret }}
{{- end }}
{{- end -}}

{{- define "keyway.configMapFromKctx" -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "keyway.configMapName" . }}
  labels:
    {{- include "keyway.labels" . | nindent 4 }}
data:
  keyway.toml: |
    {{- include "keyway.toml" . | nindent 4 }}
{{- end -}}

{{/*
The cert-manager Certificate (cert-manager.io/v1) making the TLS listener's Secret, from
tls.certManager; nothing unless tls.enabled and tls.certManager.enabled. kctx.
*/}}
{{- define "keyway.certificateFromKctx" -}}
{{- $t := .Values.tls -}}
{{- $cm := $t.certManager -}}
{{- if and $t.enabled $cm.enabled -}}
{{- if not $cm.issuerRef.name -}}
{{- fail "keyway: tls.certManager.enabled needs tls.certManager.issuerRef.name (an Issuer or ClusterIssuer)" -}}
{{- end -}}
{{- $alg := $cm.privateKey.algorithm -}}
{{- $size := int $cm.privateKey.size -}}
{{- if not (or (and (eq $alg "ECDSA") (has $size (list 256 384))) (and (eq $alg "RSA") (has $size (list 2048 3072 4096)))) -}}
{{- fail (printf "keyway: tls.certManager.privateKey: %s %d is not supported (ECDSA 256 or 384, RSA 2048, 3072 or 4096)" $alg $size) -}}
{{- end -}}
{{- $dns := $cm.dnsNames -}}
{{- $ips := $cm.ipAddresses -}}
{{- if and (not $dns) (not $ips) -}}
{{- if eq (include "keyway.mode" .) "sidecar" -}}
{{- $dns = list "localhost" -}}
{{- $ips = list "127.0.0.1" -}}
{{- else -}}
{{- $svc := include "keyway.fullname" . -}}
{{- $ns := .Release.Namespace | default "default" -}}
{{- $dns = list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns $cm.clusterDomain) -}}
{{- end -}}
{{- end -}}
apiVersion: cert-manager.io/v1
kind: Certificate
metadata:
  name: {{ include "keyway.tlsSecretName" . }}
  labels:
    {{- include "keyway.labels" . | nindent 4 }}
spec:
  # Mounted as a directory into the Keyway containers: a renewal reaches Keyway, which re-reads
  # the files at the next handshake (established connections keep theirs).
  secretName: {{ include "keyway.tlsSecretName" . }}
  issuerRef:
    name: {{ $cm.issuerRef.name }}
    kind: {{ $cm.issuerRef.kind }}
    group: {{ $cm.issuerRef.group }}
  {{- with $dns }}
  dnsNames:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $ips }}
  ipAddresses:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $cm.duration }}
  duration: {{ . }}
  {{- end }}
  {{- with $cm.renewBefore }}
  renewBefore: {{ . }}
  {{- end }}
  privateKey:
    algorithm: {{ $cm.privateKey.algorithm }}
    size: {{ int $cm.privateKey.size }}
    # A new key at each renewal.
    rotationPolicy: Always
  usages:
    - digital signature
    - key encipherment
    - server auth
{{- end -}}
{{- end -}}

{{/* ---- Public templates ---- */}}

{{/* The ConfigMap manifest. */}}
{{- define "keyway.configMap" -}}
{{- $k := include "keyway.kctx" . | fromJson -}}
{{- $_ := set $k "Release" .Release -}}
{{- include "keyway.configMapFromKctx" $k -}}
{{- end -}}

{{/* The cert-manager Certificate of tls.certManager (empty when off). */}}
{{- define "keyway.certificate" -}}
{{- $k := include "keyway.kctx" . | fromJson -}}
{{- $_ := set $k "Release" .Release -}}
{{- include "keyway.certificateFromKctx" $k -}}
{{- end -}}

{{/*
The Keyway native sidecar: one entry of the pod's initContainers (Kubernetes 1.29+).
  initContainers:
    {{- include "keyway.sidecar" . | nindent 8 }}
*/}}
{{- define "keyway.sidecar" -}}
{{- $k := include "keyway.kctx" . | fromJson -}}
{{- $_ := set $k "Release" .Release -}}
{{- $_ := set $k "sidecar" true -}}
{{- $_ := set $k "preStop" ($k.Values.sidecar.preStopSleepSeconds | default 0) -}}
{{- if ne (include "keyway.mode" $k) "sidecar" -}}
{{- fail "keyway.sidecar: set mode: sidecar in the Keyway values (keyway.mode when Keyway is a dependency)" -}}
{{- end -}}
- {{ include "keyway.container" $k | nindent 2 | trim }}
{{- end -}}

{{/*
The config volume, and one Secret volume per Secret in use (auth.*, users, tls, poolTls): entries
of the pod's volumes.
  volumes:
    {{- include "keyway.sidecarVolume" . | nindent 8 }}
*/}}
{{- define "keyway.sidecarVolume" -}}
{{- $k := include "keyway.kctx" . | fromJson -}}
{{- $_ := set $k "Release" .Release -}}
{{- $_ := set $k "sidecar" true -}}
- name: {{ $k.Values.sidecar.volumeName }}
  configMap:
    name: {{ include "keyway.configMapName" $k }}
{{- include "keyway.secretVolumes" $k }}
{{- end -}}
