{{- define "nurture.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "nurture.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "nurture.labels" -}}
app.kubernetes.io/name: {{ include "nurture.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "nurture.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nurture.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
The retrainer's pods: another name, so that the server's Deployment,
Service, HPA and PDB (which select by name and instance) never take them.
*/}}
{{- define "nurture.retrainerSelectorLabels" -}}
app.kubernetes.io/name: {{ include "nurture.name" . }}-retrainer
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: retrainer
{{- end -}}

{{/*
Environment that reaches the registry's object store: the region, an
S3-compatible endpoint, and keys from `secret` when one is named.
*/}}
{{- define "nurture.storeEnv" -}}
- name: AWS_REGION
  value: {{ .Values.registry.s3.region | quote }}
{{- if .Values.registry.s3.endpoint }}
- name: AWS_ENDPOINT
  value: {{ .Values.registry.s3.endpoint | quote }}
{{- end }}
{{- if .Values.registry.s3.allowHttp }}
- name: AWS_ALLOW_HTTP
  value: "true"
{{- end }}
{{- if .secret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: AWS_ACCESS_KEY_ID
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: AWS_SECRET_ACCESS_KEY
{{- end }}
{{- end -}}

{{/*
One `nurture-trainer watch` container for .model (dict: root, model, index, once).
*/}}
{{- define "nurture.retrainerContainer" -}}
- name: watch-{{ .model }}
  image: "{{ .root.Values.image.repository }}:{{ .root.Values.image.tag | default .root.Chart.AppVersion }}"
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  command: ["/usr/local/bin/nurture-trainer"]
  args:
    - watch
    - {{ .model | quote }}
    - --registry={{ .root.Values.registry.url }}
    - --interval={{ .root.Values.retrainer.interval }}
    - --after-outcomes={{ .root.Values.retrainer.afterOutcomes }}
    - --min-outcomes={{ .root.Values.retrainer.minOutcomes }}
    - --min-gain={{ .root.Values.retrainer.minGain }}
    - --steps={{ .root.Values.retrainer.steps }}
    - --actor=retrainer@{{ .root.Release.Name }}
    {{- if .once }}
    - --once
    {{- else }}
    - --metrics-listen=0.0.0.0:{{ add .root.Values.retrainer.metricsPort .index }}
    {{- end }}
  env:
    - name: NURTURE_LOG
      value: {{ .root.Values.server.logLevel | quote }}
    {{- include "nurture.storeEnv" (dict "Values" .root.Values "secret" .root.Values.retrainer.existingSecret) | nindent 4 }}
  {{- if not .once }}
  ports:
    - name: metrics-{{ .index }}
      containerPort: {{ add .root.Values.retrainer.metricsPort .index }}
      protocol: TCP
  {{- end }}
  resources:
    {{- toYaml .root.Values.retrainer.resources | nindent 4 }}
  securityContext:
    {{- toYaml .root.Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
{{- end -}}
