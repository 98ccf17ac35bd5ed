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
