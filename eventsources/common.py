"""Config pieces shared by several source types (the event filter, the public URL)."""

from __future__ import annotations

from app.kernel.spec import SpecModel


class EventSourceFilter(SpecModel):
    """``filter.expression``: drop events for which the expression is false."""

    expression: str = ""


def formatted_url(url: str, endpoint: str) -> str:
    """Argo's ``FormattedURL``: a public base URL (``webhook.url``) without its trailing
    ``/``, then the endpoint; what a provider is told to post to."""
    return url.rstrip("/") + (endpoint if endpoint.startswith("/") else "/" + endpoint)
