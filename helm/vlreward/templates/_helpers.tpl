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

{{- /* Whether a served model is a Hugging Face repo id (owner/name) rather than a path: model.name, or any
entry of models. */ -}}
{{- define "vlreward.repoId" -}}
{{- $pattern := "^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$" -}}
{{- $sources := list (.Values.model.name | default "") -}}
{{- if .Values.models }}{{ $sources = list }}{{ range .Values.models }}{{ $sources = append $sources (.model | default "") }}{{ end }}{{ end -}}
{{- range $sources }}{{ if regexMatch $pattern . }}true{{ end }}{{ end -}}
{{- end -}}

{{- /* The models file (vlreward.service.catalog's YAML: name -> model, default and its own settings). */ -}}
{{- define "vlreward.modelsFile" -}}
{{- $file := dict -}}
{{- range .Values.models -}}
{{- $entry := merge (dict "model" .model) (.settings | default dict) -}}
{{- if .default }}{{ $_ := set $entry "default" true }}{{ end -}}
{{- $_ := set $file .name $entry -}}
{{- end -}}
{{- toYaml $file -}}
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
{{- include "vlreward.validateModels" . -}}
{{- $startup := mul (int .Values.probes.startup.periodSeconds) (int .Values.probes.startup.failureThreshold) -}}
{{- if lt (int .Values.progressDeadlineSeconds) $startup -}}
{{- fail (printf "progressDeadlineSeconds (%d) is shorter than the startup probe's budget (%d s): a rollout would be marked failed while a pod is still loading" (int .Values.progressDeadlineSeconds) $startup) -}}
{{- end -}}
{{- end -}}


{{- /* The models list: names valid and distinct, one default at most, paths that will exist, and the vLLM
models' shares of the GPU declared and within it. */ -}}
{{- define "vlreward.validateModels" -}}
{{- $model := .Values.model -}}
{{- $names := list -}}
{{- $defaults := 0 -}}
{{- $vllm := list -}}
{{- $share := 0.0 -}}
{{- $root := printf "%s/" (trimSuffix "/" $model.mountPath) -}}
{{- range $i, $entry := .Values.models -}}
{{- if not (regexMatch "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$" ($entry.name | default "")) -}}
{{- fail (printf "models[%d].name %q: use letters, digits, '.', '_' and '-' (requests send it as model)" $i ($entry.name | default "")) -}}
{{- end -}}
{{- if has $entry.name $names -}}
{{- fail (printf "models[%d].name %q is given twice" $i $entry.name) -}}
{{- end -}}
{{- $names = append $names $entry.name -}}
{{- if $entry.default }}{{ $defaults = add1 $defaults }}{{ end -}}
{{- $source := $entry.model | default "" -}}
{{- $repo := regexMatch "^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$" $source -}}
{{- if and (not $repo) (not (hasPrefix $root $source)) -}}
{{- fail (printf "models[%d].model %q: give a path under model.mountPath (%s) or a Hugging Face repo id" $i $source $model.mountPath) -}}
{{- end -}}
{{- if and (not $repo) (has $model.storage (list "pvc" "emptyDir")) (ne $source ($model.name | default "")) -}}
{{- fail (printf "models[%d].model %s would not exist: model.storage=%s starts empty and model.fetch fills model.name (%s) only; use model.storage=existingClaim holding it, or a repo id" $i $source $model.storage $model.name) -}}
{{- end -}}
{{- $settings := $entry.settings | default dict -}}
{{- if eq (get $settings "backend" | default $.Values.backend) "vllm" -}}
{{- $vllm = append $vllm $entry.name -}}
{{- if hasKey $settings "vllm_gpu_memory_utilization" }}{{ $share = addf $share (get $settings "vllm_gpu_memory_utilization") }}{{ end -}}
{{- end -}}
{{- end -}}
{{- if gt $defaults 1 -}}
{{- fail "models: more than one entry has default: true" -}}
{{- end -}}
{{- if gt (len $vllm) 1 -}}
{{- range $entry := .Values.models -}}
{{- if and (has $entry.name $vllm) (not (hasKey ($entry.settings | default dict) "vllm_gpu_memory_utilization")) -}}
{{- fail (printf "models: %s share the GPU on the vLLM backend; give each settings.vllm_gpu_memory_utilization (%s has none), their sum at most 0.95" (join ", " $vllm) $entry.name) -}}
{{- end -}}
{{- end -}}
{{- if gt $share 0.95 -}}
{{- fail (printf "models: the vLLM models' vllm_gpu_memory_utilization add up to %.2f; at most 0.95 (the GPU's memory, less what CUDA itself needs)" $share) -}}
{{- end -}}
{{- end -}}
{{- end -}}
