{{/* Names and labels shared by every object of the release. */}}
{{- define "trellis.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end }}

{{- define "trellis.labels" -}}
app.kubernetes.io/part-of: trellis
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{- define "trellis.controlplane" -}}trellis-controlplane{{- end }}
{{- define "trellis.node" -}}trellis-node{{- end }}

{{/* Where ztunnel and the node agent reach the control plane (mTLS, :15012). */}}
{{- define "trellis.controlplaneAddress" -}}
{{ include "trellis.controlplane" . }}.{{ .Release.Namespace }}.svc:15012
{{- end }}
