"""Trigger parameters: take a value from the events that fired a trigger, set it in an object.

The sensor runner applies ``trigger.parameters`` to the trigger template and each trigger
plugin applies its own ``<type>.parameters`` to its resource or payload (DESIGN §4). Both
use :func:`apply_parameters` with parameters compiled once, when the Sensor is loaded,
by :meth:`CompiledParameter.compile`: the ``dataKey``/``contextKey`` gjson paths, the
``dataTemplate``/``contextTemplate`` Go templates and the ``dest`` sjson path are all
parsed then, so a bad manifest fails at load with the field named
(:class:`ParameterSpecError`, both a ``ConfigError`` and a ``ValueError``).

Resolution follows Argo's ``ResolveParamValue``:

1. the dependency's event is absent (an ``||`` condition fired without it): the default
   ``value`` if there is one, else the parameter is skipped;
2. no key and no template: the default, else the whole event as JSON text;
3. ``dataKey``/``dataTemplate`` address the event data; only when neither is set do
   ``contextKey``/``contextTemplate`` address the CloudEvent context (``id``, ``source``,
   ``specversion``, ``type``, ``datacontenttype``, ``subject``, ``time``);
4. template first (``.Input`` bound to the data or context); a template that fails or
   renders ``""`` or ``<no value>`` falls back to the key, then to the default;
5. nothing resolved and no default: :class:`app.kernel.errors.ParameterError` naming the
   parameter, the dependency and the path. Argo fails here too, but has let a
   mistyped key pass the whole payload in the past (#2076); here a missing key is
   always an error unless a default is given.

Typing is Argo's: without ``useRawData`` the value set at ``dest`` is a string (gjson's
``String()``: objects and arrays as compact JSON, ``null`` as ``"null"``, numbers in Go's
notation); with it, a found non-string value is set as the JSON value itself (number,
bool, null, object, array). Templates and defaults always give strings. ``operation``
``append``/``prepend`` concatenate with the string form of the value already at
``dest``; on an absent ``dest`` they set the value as ``overwrite`` does.

Values are set into the parsed object at the path, never spliced into JSON text. The
object is copied once per application, not per parameter.

Documented differences from Argo: a template that does not parse (an undefined
function, a syntax error) is rejected when the Sensor is loaded, where Argo would fall
back to the key on every event; the whole-event value (step 2) carries ``data`` as JSON,
not base64; objects found by key are rendered as compact JSON (Argo keeps the event's
own spacing and escapes ``<``, ``>``, ``&``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from app.kernel.errors import ConfigError, ParameterError
from app.kernel.events import Event
from app.languages.gotemplate import Template, TemplateExecError, compile_template
from app.languages.paths import GetPath, SetPath, compile_get, compile_set, raw, to_string

__all__ = [
    "CompiledParameter",
    "ParameterLike",
    "ParameterSourceLike",
    "ParameterSpecError",
    "Resolved",
    "SourceKind",
    "apply_parameters",
    "compile_parameters",
    "construct_payload",
]

SourceKind = Literal["template", "dataKey", "contextKey", "default", "event"]
"""Where a resolved value came from; ``event`` is the whole event (no key, no default)."""

Operation = Literal["overwrite", "append", "prepend"]
_OPERATIONS: dict[str, Operation] = {
    "": "overwrite",
    "overwrite": "overwrite",
    "append": "append",
    "prepend": "prepend",
}


class ParameterSourceLike(Protocol):
    """The fields of ``sensors.spec.TriggerParameterSource`` this module reads."""

    @property
    def dependency_name(self) -> str: ...
    @property
    def data_key(self) -> str | None: ...
    @property
    def data_template(self) -> str | None: ...
    @property
    def context_key(self) -> str | None: ...
    @property
    def context_template(self) -> str | None: ...
    @property
    def value(self) -> str | None: ...
    @property
    def use_raw_data(self) -> bool: ...


class ParameterLike(Protocol):
    """The fields of ``sensors.spec.TriggerParameter`` (or an HTTP payload entry)."""

    @property
    def src(self) -> ParameterSourceLike: ...
    @property
    def dest(self) -> str: ...
    @property
    def operation(self) -> str: ...


class ParameterSpecError(ConfigError, ValueError):
    """A parameter cannot be compiled; ``path`` names the field (``parameters[0].dest``)."""


@dataclass(frozen=True, slots=True)
class Resolved:
    """A parameter's resolved value.

    ``value`` is what is set at ``dest``: a string, or with ``useRawData`` the JSON
    value found by key (``raw`` is then true). ``text`` is the string form Argo works
    with (used by append/prepend). ``notes`` say what was tried and failed before
    ``source`` gave the value (for traces).
    """

    value: Any
    text: str
    source: SourceKind
    raw: bool = False
    notes: tuple[str, ...] = ()


def _json_copy(v: Any) -> Any:
    """Copy the containers of a JSON-shaped value (leaves are immutable)."""
    if isinstance(v, dict):
        return {k: _json_copy(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_json_copy(x) for x in v]
    return v


def _context_of(event: Event) -> dict[str, Any]:
    """The CloudEvent context as Argo marshals it for ``contextKey``/``contextTemplate``."""
    return event.context()


class CompiledParameter:
    """One ``TriggerParameter`` with its paths and template compiled; see the module doc.

    Attributes: ``index``, ``where``, ``dependency``, ``dest``, ``operation``
    (``overwrite`` when unset), ``use_raw_data``.
    """

    __slots__ = (
        "_default",
        "_dest_path",
        "_key_field",
        "_key_path",
        "_mode",
        "_template",
        "_template_field",
        "dependency",
        "dest",
        "index",
        "operation",
        "use_raw_data",
        "where",
    )

    def __init__(
        self,
        param: ParameterLike,
        index: int = 0,
        *,
        where: str = "parameters",
        allow_empty_dest: bool = False,
    ) -> None:
        """Compile ``param`` (``index`` in the list at ``where``, used in messages).

        ``allow_empty_dest`` admits ``dest: ""`` (HTTP payloads: the value is the whole
        payload, see :func:`construct_payload`). Raises :class:`ParameterSpecError`.
        """
        self.index = index
        self.where = where
        src = param.src
        self.dependency = src.dependency_name
        self.dest = param.dest
        op = _OPERATIONS.get(param.operation)
        if op is None:
            raise ParameterSpecError(
                f"unsupported operation {param.operation!r}", f"{where}[{index}].operation"
            )
        self.operation: Operation = op
        self.use_raw_data = bool(src.use_raw_data)
        self._default = src.value
        prefix = f"{where}[{index}]"
        if not self.dependency:
            raise ParameterSpecError(
                "dependency name can't be empty", f"{prefix}.src.dependencyName"
            )

        # Argo: a data key or template takes precedence over the context pair entirely.
        if src.data_key or src.data_template:
            self._mode: Literal["data", "context"] | None = "data"
            key, tmpl = src.data_key, src.data_template
            self._key_field, self._template_field = "dataKey", "dataTemplate"
        elif src.context_key or src.context_template:
            self._mode = "context"
            key, tmpl = src.context_key, src.context_template
            self._key_field, self._template_field = "contextKey", "contextTemplate"
        else:
            self._mode = None
            key = tmpl = None
            self._key_field, self._template_field = "dataKey", "dataTemplate"

        self._key_path: GetPath | None = None
        if key:
            try:
                self._key_path = compile_get(key)
            except ValueError as e:
                raise ParameterSpecError(
                    f"invalid path {key!r}: {e}", f"{prefix}.src.{self._key_field}"
                ) from e
        self._template: Template | None = None
        if tmpl:
            try:
                self._template = compile_template(tmpl)
            except ValueError as e:
                raise ParameterSpecError(
                    f"invalid template: {e}", f"{prefix}.src.{self._template_field}"
                ) from e

        self._dest_path: SetPath | None = None
        if self.dest == "":
            if not allow_empty_dest:
                raise ParameterSpecError("destination can't be empty", f"{prefix}.dest")
        else:
            try:
                self._dest_path = compile_set(self.dest)
            except ValueError as e:
                raise ParameterSpecError(f"invalid path: {e}", f"{prefix}.dest") from e

    @classmethod
    def compile(
        cls,
        param: ParameterLike,
        index: int = 0,
        *,
        where: str = "parameters",
        allow_empty_dest: bool = False,
    ) -> CompiledParameter:
        """Same as the constructor; reads better at call sites."""
        return cls(param, index, where=where, allow_empty_dest=allow_empty_dest)

    @property
    def label(self) -> str:
        """How messages name this parameter: ``parameter 0 (training-event)``."""
        base = f"parameter {self.index} ({self.dependency})"
        return base if self.where == "parameters" else f"{base} in {self.where}"

    # -- resolution ------------------------------------------------------------------

    def _from_default(self, notes: list[str]) -> Resolved:
        assert self._default is not None
        return Resolved(self._default, self._default, "default", False, tuple(notes))

    def resolve(self, events: Mapping[str, Event]) -> Resolved | None:
        """The value for this parameter, ``None`` to skip it (its event is absent and it
        has no default); :class:`ParameterError` when nothing resolves."""
        event = events.get(self.dependency)
        if event is None:
            if self._default is not None:
                return self._from_default([f"no event for dependency {self.dependency!r}"])
            return None

        if self._mode is None:
            if self._default is not None:
                return self._from_default([])
            text = raw({"context": _context_of(event), "data": event.data})
            return Resolved(text, text, "event")

        payload: Any = event.data if self._mode == "data" else _context_of(event)
        where = "event data" if self._mode == "data" else "event context"
        notes: list[str] = []
        if self._template is not None:
            try:
                out = self._template.render({"Input": payload})
            except TemplateExecError as e:
                notes.append(f"{self._template_field} failed: {e}")
            else:
                if out not in ("", "<no value>"):
                    return Resolved(out, out, "template")
                shown = "an empty string" if out == "" else "<no value>"
                notes.append(f"{self._template_field} rendered {shown}")

        if self._key_path is not None:
            found, value = self._key_path.get(payload)
            if found:
                return self._typed(value, notes)
            notes.append(f"{self._key_field} {self._key_path.path!r} not found in {where}")

        if self._default is not None:
            return self._from_default(notes)
        raise ParameterError(f"{self.label}: {'; '.join(notes)}, and no default value")

    def _typed(self, value: Any, notes: list[str]) -> Resolved:
        kind: SourceKind = "dataKey" if self._key_field == "dataKey" else "contextKey"
        if isinstance(value, str):
            return Resolved(value, value, kind, False, tuple(notes))
        # Argo hands objects, arrays and null on as raw JSON, scalars as gjson String().
        text = raw(value) if value is None or isinstance(value, (dict, list)) else to_string(value)
        if self.use_raw_data:
            return Resolved(_json_copy(value), text, kind, True, tuple(notes))
        return Resolved(text, text, kind, False, tuple(notes))

    # -- application -----------------------------------------------------------------

    def record(self, resolved: Resolved | None, value: Any) -> dict[str, Any]:
        """A JSON-ready trace entry: what this parameter did."""
        return {
            "index": self.index,
            "where": self.where,
            "dependency": self.dependency,
            "dest": self.dest,
            "operation": self.operation,
            "source": "skipped" if resolved is None else resolved.source,
            "value": _json_copy(value),
            "notes": [] if resolved is None else list(resolved.notes),
        }

    def apply_to(
        self, doc: Any, resolved: Resolved, *, use_operation: bool = True
    ) -> tuple[Any, Any]:
        """Set ``resolved`` at ``dest`` in ``doc``, in place, honouring ``operation``
        unless ``use_operation`` is false.

        Returns the root (new only if ``doc`` was not a container) and the value set.
        """
        value = resolved.value
        path = self._dest_path
        if path is None:
            raise ParameterError(f"{self.label}: dest is empty")
        if use_operation and self.operation in ("append", "prepend"):
            found, current = path.get(doc)
            if found:
                cur = to_string(current)
                value = cur + resolved.text if self.operation == "append" else resolved.text + cur
        try:
            return path.set(doc, value), value
        except ValueError as e:
            raise ParameterError(f"{self.label}: cannot set dest: {e}") from e

    def __repr__(self) -> str:
        return f"CompiledParameter({self.label}, dest={self.dest!r})"


def compile_parameters(
    params: Sequence[ParameterLike] | None,
    *,
    where: str = "parameters",
    allow_empty_dest: bool = False,
) -> list[CompiledParameter]:
    """Compile a parameter list; :class:`ParameterSpecError` names the first bad field."""
    return [
        CompiledParameter(p, i, where=where, allow_empty_dest=allow_empty_dest)
        for i, p in enumerate(params or [])
    ]


def apply_parameters(
    obj: dict[str, Any],
    params: Sequence[CompiledParameter],
    events: Mapping[str, Event],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A copy of ``obj`` with every parameter applied in order, and one trace record per
    parameter (``source`` is ``skipped`` for a parameter whose event is absent).

    ``obj`` itself is never modified. Raises :class:`ParameterError` when a parameter
    cannot be resolved or its ``dest`` cannot be set.
    """
    doc: dict[str, Any] = _json_copy(obj)
    records: list[dict[str, Any]] = []
    for p in params:
        resolved = p.resolve(events)
        if resolved is None:
            records.append(p.record(None, None))
            continue
        # Setting into a dict changes it in place and keeps it as the root.
        _, value = p.apply_to(doc, resolved)
        records.append(p.record(resolved, value))
    return doc, records


def construct_payload(
    params: Sequence[CompiledParameter],
    events: Mapping[str, Event],
) -> tuple[bytes, list[dict[str, Any]]]:
    """Build a JSON request body from parameters alone, as Argo's ``ConstructPayload``.

    Each value is set at its ``dest`` in an initially empty document (``operation`` is
    not used, as in Argo). A parameter with an empty ``dest`` (compiled with
    ``allow_empty_dest``) makes its value the whole payload, as text. Returns the body
    (``b""`` when nothing was set) and the trace records.
    """
    doc: Any = None
    records: list[dict[str, Any]] = []
    for p in params:
        resolved = p.resolve(events)
        if resolved is None:
            records.append(p.record(None, None))
            continue
        if p.dest == "":
            records.append(p.record(resolved, resolved.text))
            return resolved.text.encode(), records
        doc, value = p.apply_to(doc, resolved, use_operation=False)
        records.append(p.record(resolved, value))
    return (b"" if doc is None else raw(doc).encode()), records
