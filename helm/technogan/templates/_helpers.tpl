{{/* Names are cut so that "<fullname>-<component>-<index>" stays within 63 characters. */}}
{{- define "technogan.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 30 | trimSuffix "-" -}}
{{- end -}}

{{- define "technogan.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 30 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 30 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 30 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "technogan.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Standard labels; call with (dict "root" $ "component" "x"). */}}
{{- define "technogan.labels" -}}
helm.sh/chart: {{ include "technogan.chart" .root }}
app.kubernetes.io/name: {{ include "technogan.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: technogan
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "technogan.selectorLabels" -}}
app.kubernetes.io/name: {{ include "technogan.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "technogan.claim" -}}
{{- default (printf "%s-data" (include "technogan.fullname" .)) .Values.existingClaim -}}
{{- end -}}

{{- define "technogan.mlflowName" -}}{{ include "technogan.fullname" . }}-mlflow{{- end -}}
{{- define "technogan.torchserveName" -}}{{ include "technogan.fullname" . }}-torchserve{{- end -}}
{{/* TorchServe's own inference port, on loopback behind the gate (technogan gate) */}}
{{- define "technogan.torchserveDirectPort" -}}8085{{- end -}}
{{/* TorchServe's max_request_size; the gate answers larger bodies with the JSON 413 */}}
{{- define "technogan.torchserveMaxRequestBytes" -}}6553500{{- end -}}
{{- define "technogan.jobName" -}}{{ include "technogan.fullname" .root }}-{{ .name }}{{- end -}}

{{/* The training Job of one runs entry. */}}
{{- define "technogan.trainJobName" -}}{{ include "technogan.fullname" .root }}-train-{{ .run.name }}{{- end -}}

{{/* Pod-level security: non-root with the image's fixed UID. */}}
{{- define "technogan.podSecurity" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: {{ .Values.runAsUser }}
  runAsGroup: {{ .Values.runAsUser }}
  fsGroup: {{ .Values.runAsUser }}
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{- define "technogan.containerSecurity" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  runAsNonRoot: true
  capabilities:
    drop: ["ALL"]
{{- end -}}

{{/* Where programs write besides the claim: /tmp (TMPDIR, HOME, matplotlib, torch). */}}
{{- define "technogan.commonEnv" -}}
- name: HOME
  value: /tmp
- name: TMPDIR
  value: /tmp
- name: MPLCONFIGDIR
  value: /tmp/matplotlib
- name: PYTHONUNBUFFERED
  value: "1"
{{- end -}}

{{- define "technogan.trackingEnv" -}}
{{- if .Values.mlflowEnabled }}
- name: MLFLOW_TRACKING_URI
  value: http://{{ include "technogan.mlflowName" . }}:{{ .Values.mlflowPort }}
{{- else if .Values.trackingUriSecretName }}
- name: MLFLOW_TRACKING_URI
  valueFrom:
    secretKeyRef:
      name: {{ .Values.trackingUriSecretName }}
      key: {{ .Values.trackingUriSecretKey }}
{{- else }}
- name: MLFLOW_TRACKING_URI
  value: {{ .Values.trackingUri | quote }}
{{- end }}
{{- end -}}

{{- define "technogan.volumeMounts" -}}
- name: data
  mountPath: /data
- name: config
  mountPath: /etc/technogan
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "technogan.volumes" -}}
- name: data
  persistentVolumeClaim:
    claimName: {{ include "technogan.claim" . }}
- name: config
  configMap:
    name: {{ include "technogan.fullname" . }}-config
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end -}}

{{/* An init container that holds a Job until the named Jobs completed (technogan wait). */}}
{{- define "technogan.waitContainer" -}}
- name: wait
  image: {{ .root.Values.image }}
  imagePullPolicy: {{ .root.Values.imagePullPolicy }}
  command: ["technogan"]
  args:
    - wait
{{- range .jobs }}
    - --job
    - {{ . }}
{{- end }}
    - --timeout
    - {{ .root.Values.waitTimeoutSeconds | quote }}
  env:
    - name: POD_NAMESPACE
      valueFrom:
        fieldRef:
          fieldPath: metadata.namespace
    {{- include "technogan.commonEnv" . | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
  resources:
    {{- toYaml .root.Values.waitResources | nindent 4 }}
  {{- include "technogan.containerSecurity" . | nindent 2 }}
{{- end -}}
