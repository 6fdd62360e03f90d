"""Argo's expression languages, compiled once when a manifest loads.

gjson/sjson paths, govaluate and expr-lang expressions, Go templates with sprig
functions, the EventSource ``filter.expression``, jq programs and sandboxed Lua
scripts; event sources and sensors both use them. Imports only the kernel.
"""
