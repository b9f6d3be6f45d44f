{{/*
herald.name is the chart name, or .Values.nameOverride; it becomes the
app.kubernetes.io/name label. Truncated to 63 characters, the limit of a
label value.
*/}}
{{- define "herald.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
herald.fullname is the prefix of every object name: .Values.fullnameOverride,
else "<release>-<name>", else just the release name when it already contains
the chart name (so release "herald" gives "herald", not "herald-herald").
Truncated to 63 characters, the limit of a DNS label.
*/}}
{{- define "herald.fullname" -}}
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

{{/*
herald.mesh is "true" when the pods broadcast through the peer mesh
(broadcast.backend "mesh"), and empty with "redis". Only the mesh needs peer
discovery and its Role and RoleBinding, the service account token, the peer
port and the cluster secret; every template that renders one of them asks
this helper.
*/}}
{{- define "herald.mesh" -}}
{{- if eq .Values.broadcast.backend "mesh" }}true{{ end }}
{{- end }}

{{/*
herald.checkBroadcast renders nothing: it fails when the redis backend is
chosen without broadcast.redis.urlSecret.name (the chart takes the URL only
from a Secret, since it may carry the password), or together with tls.peer,
which secures the mesh's peer port that the redis backend does not have.
*/}}
{{- define "herald.checkBroadcast" -}}
{{- if not (include "herald.mesh" .) }}
{{- if not .Values.broadcast.redis.urlSecret.name }}
{{- fail "broadcast.backend=redis needs broadcast.redis.urlSecret.name: a Secret in the release namespace holding the Redis URL (redis://host:6379/0, or rediss:// for TLS) under broadcast.redis.urlSecret.key (default \"url\"). The URL may carry the password, so the chart never takes it as a plain value" }}
{{- end }}
{{- if .Values.tls.peer.enabled }}
{{- fail "tls.peer secures the mesh's peer port, which broadcast.backend=redis does not have: turn tls.peer.enabled off, and give a rediss:// URL for TLS to Redis" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
herald.peerServiceName is the headless Service whose endpoints are the peers;
herald watches it (--k8s-service). The fullname is cut to 57 characters so
that the "-peers" suffix still fits in 63.
*/}}
{{- define "herald.peerServiceName" -}}
{{- printf "%s-peers" (include "herald.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{/*
herald.jwtSecretName is the Secret holding the JWT key material:
auth.jwt.existingSecret, or the "<fullname>-jwt" Secret the chart generates
(the fullname is cut to 59 characters so that the suffix fits in 63).
*/}}
{{- define "herald.jwtSecretName" -}}
{{- if .Values.auth.jwt.existingSecret }}
{{- .Values.auth.jwt.existingSecret }}
{{- else }}
{{- printf "%s-jwt" (include "herald.fullname" . | trunc 59 | trimSuffix "-") }}
{{- end }}
{{- end }}

{{/*
herald.clusterSecretName is the Secret holding the cluster's shared secret,
which every pod proves it holds in the peer handshake:
cluster.secret.existingSecret, or the "<fullname>-cluster" Secret the chart
generates (the fullname is cut to 55 characters so that the suffix fits in
63).
*/}}
{{- define "herald.clusterSecretName" -}}
{{- if .Values.cluster.secret.existingSecret }}
{{- .Values.cluster.secret.existingSecret }}
{{- else }}
{{- printf "%s-cluster" (include "herald.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}
{{- end }}

{{/*
herald.apiTokensSecretName is the Secret holding the gRPC API's bearer
tokens: auth.apiTokens.existingSecret, or the "<fullname>-api-tokens" Secret
the chart generates when auth.apiTokens.generate is on (the fullname is cut
to 52 characters so that the suffix fits in 63). It is empty when neither
applies, which leaves the gRPC API open.
*/}}
{{- define "herald.apiTokensSecretName" -}}
{{- if .Values.auth.apiTokens.existingSecret }}
{{- .Values.auth.apiTokens.existingSecret }}
{{- else if .Values.auth.apiTokens.generate }}
{{- printf "%s-api-tokens" (include "herald.fullname" . | trunc 52 | trimSuffix "-") }}
{{- end }}
{{- end }}

{{/*
herald.generatedSecretValue is the base64 value of one key of a Secret the
chart generates, called with (dict "root" $ "name" <Secret> "key" <key>): the
value already stored in the cluster when the Secret exists (lookup), so that
upgrades keep it, else a fresh random 48-character one. `helm template` and
--dry-run cannot look anything up and get a fresh value each time.
*/}}
{{- define "herald.generatedSecretValue" -}}
{{- $value := randAlphaNum 48 | b64enc }}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .name }}
{{- if and $existing $existing.data }}
{{- with index $existing.data .key }}
{{- $value = . }}
{{- end }}
{{- end }}
{{- $value }}
{{- end }}

{{/*
herald.jwtKeySource is the one auth.jwt value that names where the user-token
keys come from: "secretKey", "publicKeyKey" or "jwksKey" (a key of the JWT
Secret), or "jwksUrl" or "oidcIssuer" (an identity provider herald fetches
the keys from, with no Secret). It fails unless exactly one is set (secretKey
defaults to "secret", so using any other means clearing it), when a public
key or JWKS is asked for without auth.jwt.existingSecret (the chart can only
generate an HS256 secret), and when auth.jwt.providerCA is given without an
identity provider to trust it for.
*/}}
{{- define "herald.jwtKeySource" -}}
{{- $jwt := .Values.auth.jwt }}
{{- $set := list }}
{{- range list "secretKey" "publicKeyKey" "jwksKey" "jwksUrl" "oidcIssuer" }}
{{- if index $jwt . }}{{ $set = append $set . }}{{ end }}
{{- end }}
{{- if ne (len $set) 1 }}
{{- fail "auth.jwt: set exactly one of secretKey, publicKeyKey, jwksKey, jwksUrl and oidcIssuer (secretKey defaults to \"secret\": clear it with \"\" to use one of the others)" }}
{{- end }}
{{- $source := first $set }}
{{- if and (has $source (list "publicKeyKey" "jwksKey")) (not $jwt.existingSecret) }}
{{- fail "auth.jwt.publicKeyKey and auth.jwt.jwksKey need auth.jwt.existingSecret: the chart can only generate an HS256 secret" }}
{{- end }}
{{- if and $jwt.providerCA.configMap (not (has $source (list "jwksUrl" "oidcIssuer"))) }}
{{- fail "auth.jwt.providerCA is the CA of the identity provider's server: it needs auth.jwt.jwksUrl or auth.jwt.oidcIssuer" }}
{{- end }}
{{- $source }}
{{- end }}

{{/*
herald.jwtKeyFlag is the command-line flag for the user-token keys:
--jwt-secret-file, --jwt-public-key-file or --jwks-file with the file's path
in the JWT Secret's mount, or --jwks-url or --oidc-issuer with the URL,
following herald.jwtKeySource.
*/}}
{{- define "herald.jwtKeyFlag" -}}
{{- $jwt := .Values.auth.jwt }}
{{- $source := include "herald.jwtKeySource" . }}
{{- $flag := get (dict "secretKey" "--jwt-secret-file" "publicKeyKey" "--jwt-public-key-file" "jwksKey" "--jwks-file" "jwksUrl" "--jwks-url" "oidcIssuer" "--oidc-issuer") $source }}
{{- if include "herald.jwtFromSecret" . }}
{{- printf "%s=/etc/herald/jwt/%s" $flag (index $jwt $source) }}
{{- else }}
{{- printf "%s=%s" $flag (index $jwt $source) }}
{{- end }}
{{- end }}

{{/*
herald.jwtFromSecret is "true" when the user-token keys are a file of the JWT
Secret (herald.jwtSecretName), which the chart then mounts and, without
auth.jwt.existingSecret, generates: auth.mode is "jwt" and the key source is
secretKey, publicKeyKey or jwksKey, not an identity provider.
*/}}
{{- define "herald.jwtFromSecret" -}}
{{- if eq .Values.auth.mode "jwt" }}
{{- if has (include "herald.jwtKeySource" .) (list "secretKey" "publicKeyKey" "jwksKey") }}true{{ end }}
{{- end }}
{{- end }}

{{/*
herald.jwtProviderCA is "true" when the pods mount auth.jwt.providerCA and
pass it as --jwks-ca-file: auth.mode is "jwt", the keys come from an
identity provider, and providerCA.configMap is set.
*/}}
{{- define "herald.jwtProviderCA" -}}
{{- if and (eq .Values.auth.mode "jwt") .Values.auth.jwt.providerCA.configMap }}
{{- if has (include "herald.jwtKeySource" .) (list "jwksUrl" "oidcIssuer") }}true{{ end }}
{{- end }}
{{- end }}

{{/*
herald.tlsSecretName is the Secret holding the TLS files of tls.peer or
tls.grpc, called with (dict "root" $ "which" "peer"|"grpc"):
tls.<which>.existingSecret, or "<fullname>-<which>-tls", the Secret of the
cert-manager Certificate the chart creates (the fullname is cut to 54
characters so that the suffix fits in 63). It fails when TLS is on with
neither, or with cert-manager but no issuer.
*/}}
{{- define "herald.tlsSecretName" -}}
{{- $tls := index .root.Values.tls .which }}
{{- if $tls.existingSecret }}
{{- $tls.existingSecret }}
{{- else if $tls.certManager.enabled }}
{{- if not $tls.certManager.issuerRef.name }}
{{- fail (printf "tls.%s.certManager.enabled needs tls.%s.certManager.issuerRef.name: the cert-manager Issuer or ClusterIssuer that signs the certificate" .which .which) }}
{{- end }}
{{- printf "%s-%s-tls" (include "herald.fullname" .root | trunc 54 | trimSuffix "-") .which }}
{{- else }}
{{- fail (printf "tls.%s.enabled needs a certificate: set tls.%s.existingSecret to a kubernetes.io/tls Secret (tls.crt, tls.key%s), or tls.%s.certManager.enabled=true with tls.%s.certManager.issuerRef.name" .which .which (ternary ", ca.crt" "; ca.crt for requireClientCert" (eq .which "peer")) .which .which) }}
{{- end }}
{{- end }}

{{/*
herald.tlsCertificateEnabled is "true" when the chart creates the cert-manager
Certificate of tls.<which> (same argument as herald.tlsSecretName): TLS and
cert-manager on, and no existing Secret named.
*/}}
{{- define "herald.tlsCertificateEnabled" -}}
{{- $tls := index .root.Values.tls .which }}
{{- if and $tls.enabled $tls.certManager.enabled (not $tls.existingSecret) }}true{{ end }}
{{- end }}

{{/*
herald.drainSeconds is drainWindow ("10s") as a number of seconds; the schema
only admits whole seconds, so this is a trimSuffix.
*/}}
{{- define "herald.drainSeconds" -}}
{{- .Values.drainWindow | trimSuffix "s" | int64 }}
{{- end }}

{{/*
herald.chart is the helm.sh/chart label value: "<chart>-<version>", with "+"
(legal in SemVer, not in labels) replaced by "_".
*/}}
{{- define "herald.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
herald.selectorLabels are the labels that pick out this release's pods. They
are immutable in a Deployment's selector, so they hold only the name and the
instance, never the version.
*/}}
{{- define "herald.selectorLabels" -}}
app.kubernetes.io/name: {{ include "herald.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
herald.labels are the standard app.kubernetes.io labels plus helm.sh/chart,
put on every object the chart creates.
*/}}
{{- define "herald.labels" -}}
{{ include "herald.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | replace "+" "_" | trunc 63 | quote }}
app.kubernetes.io/component: server
app.kubernetes.io/part-of: herald
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "herald.chart" . }}
{{- end }}

{{/*
herald.serviceAccountName is the ServiceAccount the pods run as; see
serviceAccount.name in values.yaml for how it is chosen.
*/}}
{{- define "herald.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "herald.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
herald.imageTag is .Values.image.tag, or the chart's appVersion (the crate
version) when that is empty.
*/}}
{{- define "herald.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/*
herald.image is the full image reference, "<repository>:<tag>".
*/}}
{{- define "herald.image" -}}
{{- printf "%s:%s" .Values.image.repository (include "herald.imageTag" .) }}
{{- end }}

{{/*
herald.clusterName is the cluster identity (--cluster-name): cluster.name,
else "<namespace>/<fullname>". In the mesh, the pods exchange it in the peer
handshake and only join peers with the same one; with Redis, it namespaces
every key and channel. By default two releases therefore never mix their
messages, even on one Redis; the same cluster.name on purpose shares them.
*/}}
{{- define "herald.clusterName" -}}
{{- .Values.cluster.name | default (printf "%s/%s" .Release.Namespace (include "herald.fullname" .)) }}
{{- end }}

{{/*
herald.args is the `herald serve` command line as a YAML list, one flag per
item. The mesh gets its peer listener, Kubernetes discovery and cluster
secret; Redis gets --broadcast=redis and --discovery=none, and the password
file when broadcast.redis.passwordSecret names one. Both take the ready
timeout and the queue (discovery.peerReadyTimeout, discovery.peerQueue). Numbers go through int64 because Helm reads values as floats and would
print a large one as "1e+06". tests/chart runs exactly these arguments
through `herald serve --check-config`, so a flag renamed in the binary fails
the chart tests.
*/}}
{{- define "herald.args" -}}
{{- $v := .Values }}
{{- $mesh := include "herald.mesh" . }}
{{- $args := list "serve" }}
{{- $args = append $args (printf "--http-addr=%s:%d" $v.listenAddress (int64 $v.containerPorts.http)) }}
{{- $args = append $args (printf "--grpc-addr=%s:%d" $v.listenAddress (int64 $v.containerPorts.grpc)) }}
{{- if $mesh }}
{{- $args = append $args (printf "--peer-addr=%s:%d" $v.listenAddress (int64 $v.containerPorts.peer)) }}
{{- end }}
{{- $args = append $args (printf "--admin-addr=%s:%d" $v.listenAddress (int64 $v.containerPorts.admin)) }}
{{- if $mesh }}
{{- $args = append $args "--discovery=kubernetes" }}
{{- $args = append $args (printf "--k8s-service=%s" (include "herald.peerServiceName" .)) }}
{{- $args = append $args (printf "--k8s-api=%s" $v.discovery.api) }}
{{- $args = append $args "--k8s-peer-port-name=peer" }}
{{- else }}
{{- /* The URL comes from its Secret as HERALD_REDIS_URL (deployment.yaml). */}}
{{- $args = append $args "--broadcast=redis" }}
{{- $args = append $args "--discovery=none" }}
{{- with $v.broadcast.redis.passwordSecret.name }}
{{- $args = append $args (printf "--redis-password-file=/etc/herald/redis-password/%s" $v.broadcast.redis.passwordSecret.key) }}
{{- end }}
{{- end }}
{{- $args = append $args (printf "--cluster-name=%s" (include "herald.clusterName" .)) }}
{{- if $mesh }}
{{- $args = append $args (printf "--cluster-secret-file=/etc/herald/cluster/%s" $v.cluster.secret.key) }}
{{- end }}
{{- $args = append $args (printf "--peer-ready-timeout=%s" $v.discovery.peerReadyTimeout) }}
{{- $args = append $args (printf "--peer-queue=%d" (int64 $v.discovery.peerQueue)) }}
{{- $args = append $args (printf "--max-message-bytes=%d" (int64 $v.limits.maxMessageBytes)) }}
{{- $args = append $args (printf "--max-frame-bytes=%d" (int64 $v.limits.maxFrameBytes)) }}
{{- $args = append $args (printf "--max-subscriptions=%d" (int64 $v.limits.maxSubscriptions)) }}
{{- $args = append $args (printf "--client-queue=%d" (int64 $v.limits.clientQueue)) }}
{{- $args = append $args (printf "--heartbeat-interval=%s" $v.limits.heartbeatInterval) }}
{{- $args = append $args (printf "--max-connections=%d" (int64 $v.limits.maxConnections)) }}
{{- $args = append $args (printf "--max-connection-rate=%d" (int64 $v.limits.maxConnectionRate)) }}
{{- $args = append $args (printf "--max-connection-rate-per-ip=%d" (int64 $v.limits.maxConnectionRatePerIp)) }}
{{- $args = append $args (printf "--max-connections-per-user=%d" (int64 $v.limits.maxConnectionsPerUser)) }}
{{- $args = append $args (printf "--header-read-timeout=%s" $v.limits.headerReadTimeout) }}
{{- $args = append $args (printf "--max-pending-handshakes=%d" (int64 $v.limits.maxPendingHandshakes)) }}
{{- with $v.limits.clientIpHeader }}
{{- $args = append $args (printf "--client-ip-header=%s" .) }}
{{- end }}
{{- with $v.limits.trustedProxies }}
{{- $args = append $args (printf "--trusted-proxies=%s" (join "," .)) }}
{{- end }}
{{- $args = append $args (printf "--client-publish-rate=%d" (int64 $v.limits.clientPublishRate)) }}
{{- with $v.limits.allowedOrigins }}
{{- $args = append $args (printf "--allowed-origins=%s" (join "," .)) }}
{{- end }}
{{- $args = append $args (printf "--history-messages=%d" (int64 $v.history.messages)) }}
{{- $args = append $args (printf "--history-age=%s" $v.history.maxAge) }}
{{- $args = append $args (printf "--history-bytes=%d" (int64 $v.history.maxBytes)) }}
{{- with $v.history.offTopics }}
{{- $args = append $args (printf "--history-off=%s" (join "," .)) }}
{{- end }}
{{- with $v.presence.topics }}
{{- $args = append $args (printf "--presence-topics=%s" (join "," .)) }}
{{- end }}
{{- with $v.presence.infoClaim }}
{{- $args = append $args (printf "--presence-info-claim=%s" .) }}
{{- end }}
{{- $args = append $args (printf "--auth=%s" $v.auth.mode) }}
{{- if eq $v.auth.mode "jwt" }}
{{- $args = append $args (include "herald.jwtKeyFlag" .) }}
{{- if include "herald.jwtProviderCA" . }}
{{- $args = append $args (printf "--jwks-ca-file=/etc/herald/provider-ca/%s" $v.auth.jwt.providerCA.key) }}
{{- end }}
{{- with $v.auth.jwt.issuer }}
{{- $args = append $args (printf "--jwt-issuer=%s" .) }}
{{- end }}
{{- with $v.auth.jwt.audience }}
{{- $args = append $args (printf "--jwt-audience=%s" .) }}
{{- end }}
{{- end }}
{{- if include "herald.apiTokensSecretName" . }}
{{- $args = append $args (printf "--api-tokens-file=/etc/herald/api-tokens/%s" $v.auth.apiTokens.key) }}
{{- end }}
{{- if $v.auth.clientPublish }}
{{- $args = append $args "--client-publish" }}
{{- end }}
{{- if $v.demo.enabled }}
{{- $args = append $args "--demo" }}
{{- end }}
{{- if $v.tls.grpc.enabled }}
{{- $_ := include "herald.tlsSecretName" (dict "root" . "which" "grpc") }}
{{- $args = append $args "--grpc-tls-cert-file=/etc/herald/grpc-tls/tls.crt" }}
{{- $args = append $args "--grpc-tls-key-file=/etc/herald/grpc-tls/tls.key" }}
{{- if $v.tls.grpc.requireClientCert }}
{{- $args = append $args "--grpc-tls-client-ca-file=/etc/herald/grpc-tls/ca.crt" }}
{{- end }}
{{- end }}
{{- if $v.tls.peer.enabled }}
{{- $_ := include "herald.tlsSecretName" (dict "root" . "which" "peer") }}
{{- $args = append $args "--peer-tls-cert-file=/etc/herald/peer-tls/tls.crt" }}
{{- $args = append $args "--peer-tls-key-file=/etc/herald/peer-tls/tls.key" }}
{{- $args = append $args "--peer-tls-ca-file=/etc/herald/peer-tls/ca.crt" }}
{{- $args = append $args (printf "--peer-tls-server-name=%s" $v.tls.peer.serverName) }}
{{- end }}
{{- $args = append $args (printf "--drain-window=%s" $v.drainWindow) }}
{{- $args = append $args (printf "--log-format=%s" $v.log.format) }}
{{- $args = append $args (printf "--log-level=%s" $v.log.level) }}
{{- $args = concat $args $v.extraArgs }}
{{- toYaml $args }}
{{- end }}
