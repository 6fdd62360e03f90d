"""Composition: puts the plugins and adapters together into running things.

The CLI, the standalone runtime, the controller and pod roles, the offline sensor test,
manifest loading and validation, CRD generation and the operations server. The only
layer that may import everything below it.
"""
