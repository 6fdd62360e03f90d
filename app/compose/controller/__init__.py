"""``triggerfish controller``: reconciles EventBus, EventSource and Sensor objects.

Who calls it: :mod:`app.compose.cli` (``triggerfish controller``) and the tests, which run
:class:`Controller` in-process against the fake API server.

Modules, from the outside in: ``loop`` (list + watch per kind, a work queue, re-list
on 410 Expired or a dropped watch), ``reconcilers`` (one per kind: validate, check the
bus, apply children, write status), ``builders`` (the desired child objects, pure),
``conditions`` (Argo's status conditions), ``config`` (the controller's settings).
"""

from app.compose.controller.config import ControllerSettings
from app.compose.controller.loop import Controller

__all__ = ["Controller", "ControllerSettings"]
