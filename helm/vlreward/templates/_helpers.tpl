{{- define "vlreward.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vlreward.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "vlreward.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vlreward.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "vlreward.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{ include "vlreward.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "vlreward.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "vlreward.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "vlreward.modelClaim" -}}
{{- if eq .Values.model.storage "existingClaim" -}}
{{- .Values.model.existingClaim -}}
{{- else -}}
{{- printf "%s-models" (include "vlreward.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- /* Whether model.name is a Hugging Face repo id (owner/name) rather than a path. */ -}}
{{- define "vlreward.repoId" -}}
{{- if regexMatch "^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$" (.Values.model.name | default "") -}}true{{- end -}}
{{- end -}}

{{- /* The model volume is a claim that attaches on one node at a time. */ -}}
{{- define "vlreward.singleNodeClaim" -}}
{{- if and (has .Values.model.storage (list "pvc" "existingClaim")) (or (has "ReadWriteOnce" .Values.model.accessModes) (has "ReadWriteOncePod" .Values.model.accessModes)) -}}true{{- end -}}
{{- end -}}

{{- /* The most replicas the release can run (replicaCount, or the autoscaler's maximum). */ -}}
{{- define "vlreward.maxReplicas" -}}
{{- $most := int .Values.replicaCount -}}
{{- if .Values.autoscaling.enabled }}{{ $most = max $most (int .Values.autoscaling.maxReplicas) }}{{ end -}}
{{- if .Values.keda.enabled }}{{ $most = max $most (int .Values.keda.maxReplicas) }}{{ end -}}
{{- $most -}}
{{- end -}}

{{- /* How long the drain after SIGTERM waits: the longest request the server accepts, unless set. */ -}}
{{- define "vlreward.drainSeconds" -}}
{{- int (.Values.drainTimeoutSeconds | default .Values.maxRequestTimeoutSeconds) -}}
{{- end -}}

{{- /* What a pod's shutdown takes at most: preStop + drain + the server's own shutdown. */ -}}
{{- define "vlreward.shutdownSeconds" -}}
{{- add (int .Values.preStopSleepSeconds) (include "vlreward.drainSeconds" . | int) (int .Values.serverShutdownSeconds) -}}
{{- end -}}

{{- define "vlreward.gracePeriodSeconds" -}}
{{- $needed := include "vlreward.shutdownSeconds" . | int -}}
{{- if .Values.terminationGracePeriodSeconds -}}
{{- if le (int .Values.terminationGracePeriodSeconds) $needed -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds + the drain + serverShutdownSeconds (%d s): set it above, or to 0 to derive it" (int .Values.terminationGracePeriodSeconds) $needed) -}}
{{- end -}}
{{- int .Values.terminationGracePeriodSeconds -}}
{{- else -}}
{{- add $needed 10 -}}
{{- end -}}
{{- end -}}

{{- /* The fetch init container's command: convert fetch.repo into model.name, once. */ -}}
{{- define "vlreward.fetchCommand" -}}
{{- if .Values.model.fetch.command -}}
{{- toYaml .Values.model.fetch.command -}}
{{- else -}}
{{- $command := list "vlreward" "convert" .Values.model.fetch.repo .Values.model.name "--probe-device" "cpu" -}}
{{- if .Values.model.fetch.revision }}{{ $command = concat $command (list "--revision" .Values.model.fetch.revision) }}{{ end -}}
{{- toYaml $command -}}
{{- end -}}
{{- end -}}

{{- /* Refuse values that would render a pod that cannot start or cannot work, in one line naming the value. */ -}}
{{- define "vlreward.validate" -}}
{{- $model := .Values.model -}}
{{- $repoId := include "vlreward.repoId" . -}}
{{- $underVolume := hasPrefix (printf "%s/" (trimSuffix "/" $model.mountPath)) ($model.name | default "") -}}
{{- if and $model.fetch.enabled (eq $model.storage "none") -}}
{{- fail "model.fetch.enabled needs a model volume to fetch into: set model.storage to pvc, existingClaim or emptyDir" -}}
{{- end -}}
{{- if and $model.fetch.enabled (not $model.fetch.command) (not $underVolume) -}}
{{- fail (printf "model.fetch converts into model.name, which must be a path under model.mountPath (%s), e.g. %s/reward; to serve a repo id directly set model.fetch.enabled=false" $model.mountPath (trimSuffix "/" $model.mountPath)) -}}
{{- end -}}
{{- if and (has $model.storage (list "pvc" "emptyDir")) (not $model.fetch.enabled) (not $repoId) -}}
{{- fail (printf "model.storage=%s starts empty and model.fetch is off, so %s would not exist: enable model.fetch (model.fetch.repo), use model.storage=existingClaim with the weights, or set model.name to a Hugging Face repo id" $model.storage ($model.name | default "the model")) -}}
{{- end -}}
{{- if and (include "vlreward.singleNodeClaim" .) (gt (include "vlreward.maxReplicas" . | int) 1) -}}
{{- fail "model.accessModes ReadWriteOnce attaches the model volume to one node, but the release may run several replicas (replicaCount or autoscaling): use model.accessModes [ReadWriteMany], model.storage=emptyDir with model.fetch (a copy per pod), or one replica" -}}
{{- end -}}
{{- $startup := mul (int .Values.probes.startup.periodSeconds) (int .Values.probes.startup.failureThreshold) -}}
{{- if lt (int .Values.progressDeadlineSeconds) $startup -}}
{{- fail (printf "progressDeadlineSeconds (%d) is shorter than the startup probe's budget (%d s): a rollout would be marked failed while a pod is still loading" (int .Values.progressDeadlineSeconds) $startup) -}}
{{- end -}}
{{- end -}}
