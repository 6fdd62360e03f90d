"""Kernel: what every other layer may use and that imports nothing else of ours.

The event envelope, the error hierarchy, bus subjects, settings, the spec base model
with Argo's shared spec pieces (the EventBus model among them), and logging.
"""
