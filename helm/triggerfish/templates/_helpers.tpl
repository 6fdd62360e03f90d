{{/*
Naming and labels shared by every template. One helper per concept, as the other Argo
charts do, so a second component (a webhook, a UI) reuses them unchanged.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "triggerfish.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release-qualified name. Truncated at 63 characters: Kubernetes names that are DNS
labels (Services) may not be longer. A release whose name already contains the chart
name is not repeated (release "triggerfish" -> "triggerfish", not "triggerfish-triggerfish").
*/}}
{{- define "triggerfish.fullname" -}}
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

{{/* The namespace of the chart's namespaced objects. */}}
{{- define "triggerfish.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* chart-version, as the helm.sh/chart label wants it. */}}
{{- define "triggerfish.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The controller's object names. */}}
{{- define "triggerfish.controller.fullname" -}}
{{- printf "%s-%s" (include "triggerfish.fullname" .) .Values.controller.name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The controller's ServiceAccount: the chart's, or the one named (else "default"). */}}
{{- define "triggerfish.controller.serviceAccountName" -}}
{{- if .Values.controller.serviceAccount.create }}
{{- default (include "triggerfish.controller.fullname" .) .Values.controller.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.controller.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image tag: the component's, else the global one, else the chart's appVersion. */}}
{{- define "triggerfish.controller.image" -}}
{{- $repository := default .Values.global.image.repository .Values.controller.image.repository }}
{{- $tag := default (default .Chart.AppVersion .Values.global.image.tag) .Values.controller.image.tag }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}

{{/*
Selector labels of a component; call with (dict "context" $ "component" NAME).
Never change these on upgrade: a Deployment's selector is immutable.
*/}}
{{- define "triggerfish.selectorLabels" -}}
app.kubernetes.io/name: {{ include "triggerfish.name" .context }}
app.kubernetes.io/instance: {{ .context.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Every label of a component's objects; call with (dict "context" $ "component" NAME). */}}
{{- define "triggerfish.labels" -}}
helm.sh/chart: {{ include "triggerfish.chart" .context }}
{{ include "triggerfish.selectorLabels" . }}
app.kubernetes.io/version: {{ .context.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .context.Release.Service }}
app.kubernetes.io/part-of: triggerfish
{{- with .context.Values.global.additionalLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}
