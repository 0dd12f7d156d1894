{{- define "switchboard-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "switchboard-operator.labels" -}}
app.kubernetes.io/name: switchboard-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "switchboard-operator.selector" -}}
app.kubernetes.io/name: switchboard-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "switchboard-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "switchboard-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- /* The namespace the operator watches unless clusterWide: watchNamespace, else the release's. */ -}}
{{- define "switchboard-operator.watchNamespace" -}}
{{- default .Release.Namespace .Values.watchNamespace -}}
{{- end -}}
