"""Object-meta validation the real server applies to every kind (names, labels, annotations).

Kept because these are the mistakes a fake usually lets through: an upper-case
``generateName`` suffix, a label value that is too long or has a ``:`` in it, a CRD whose
name is not ``<plural>.<group>``. Spec schemas are not validated.
"""

from __future__ import annotations

import re
from typing import Any

from tests.fakekube.resources import NameRule, ResourceType

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_LABEL = re.compile(rf"^{_LABEL}$")
_DNS1123_SUBDOMAIN = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
    "'-' or '.', and must start and end with an alphanumeric character"
)
LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or "
    "'-', and must start and end with an alphanumeric character"
)
DNS1035_MSG = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start "
    "with an alphabetic character, and end with an alphanumeric character"
)

Cause = tuple[str, str]


def name_problem(name: str, rule: NameRule) -> str | None:
    """Why ``name`` is not a valid object name under ``rule``, or None."""
    if rule == "path":
        if name in (".", "..") or "/" in name or "%" in name:
            return "may not contain '/' or '%' and may not be '.' or '..'"
        return None
    if rule == "subdomain":
        if len(name) > 253:
            return "must be no more than 253 characters"
        return None if _DNS1123_SUBDOMAIN.match(name) else SUBDOMAIN_MSG
    if len(name) > 63:
        return "must be no more than 63 characters"
    pattern, msg = (_DNS1123_LABEL, LABEL_MSG) if rule == "label" else (_DNS1035_LABEL, DNS1035_MSG)
    return None if pattern.match(name) else msg


def _key_problem(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix)):
        return "prefix part " + SUBDOMAIN_MSG
    if not name or len(name) > 63 or not _QUALIFIED_NAME.match(name):
        return (
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must "
            "start and end with an alphanumeric character (at most 63 characters)"
        )
    return None


def meta_causes(rt: ResourceType, obj: dict[str, Any]) -> list[Cause]:
    """Validation failures of ``obj.metadata`` as ``(field, message)`` pairs."""
    meta = obj.get("metadata") or {}
    causes: list[Cause] = []
    name = meta.get("name") or ""
    if not name:
        causes.append(("metadata.name", "Required value: name or generateName is required"))
    elif problem := name_problem(name, rt.name_rule):
        causes.append(("metadata.name", f'Invalid value: "{name}": {problem}'))
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict):
        causes.append(("metadata.labels", "Invalid value: labels must be a map"))
        labels = {}
    for k, v in labels.items():
        if problem := _key_problem(str(k)):
            causes.append(("metadata.labels", f'Invalid value: "{k}": {problem}'))
        if not isinstance(v, str):
            causes.append((f"metadata.labels[{k}]", "Invalid value: label values are strings"))
        elif len(v) > 63 or not _LABEL_VALUE.match(v):
            causes.append(
                (
                    "metadata.labels",
                    f'Invalid value: "{v}": a valid label must be an empty string or consist '
                    "of alphanumeric characters, '-', '_' or '.', and must start and end "
                    "with an alphanumeric character (at most 63 characters)",
                )
            )
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, dict):
        causes.append(("metadata.annotations", "Invalid value: annotations must be a map"))
        annotations = {}
    for k, v in annotations.items():
        if problem := _key_problem(str(k)):
            causes.append(("metadata.annotations", f'Invalid value: "{k}": {problem}'))
        if not isinstance(v, str):
            causes.append(
                (f"metadata.annotations[{k}]", "Invalid value: annotation values are strings")
            )
    if rt.kind == "CustomResourceDefinition" and name:
        spec = obj.get("spec") or {}
        want = f"{(spec.get('names') or {}).get('plural', '')}.{spec.get('group', '')}"
        if name != want:
            causes.append(
                (
                    "metadata.name",
                    f'Invalid value: "{name}": must be spec.names.plural+"."+spec.group',
                )
            )
    return causes
