"""Load manifests from files and directories into validated models.

Who calls it: ``triggerfish validate`` and ``triggerfish run -f`` (through
:func:`load_paths`), and the controller (through :func:`load_one`, for one object read
from the API).

What it does: directories are walked recursively for ``*.yaml``, ``*.yml`` and
``*.json`` (sorted, hidden entries skipped); every file may hold several YAML documents
(empty ones are skipped). Each document is dispatched on ``(apiVersion, kind)``:
``argoproj.io/v1alpha1`` ``EventBus`` / ``EventSource`` / ``Sensor`` become their models,
then go through the support table (:mod:`app.compose.support`); every other kind
(WorkflowTemplate, ServiceAccount, Role, Secret, ...) is kept as a plain mapping for the
runtime to apply or record. Nothing raises for a bad manifest: the result lists each
problem as a :class:`ManifestError` with its file, document number, kind, name and
``path: message`` (a YAML syntax error names its line and column).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import yaml
from pydantic import ValidationError

from app.compose.support import unsupported
from app.kernel.argo import API_VERSION
from app.kernel.errors import ConfigError
from app.kernel.eventbus import EventBus
from app.kernel.spec import SpecModel, format_validation_error
from eventsources.spec import EventSource
from sensors.spec import Sensor

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
SAMPLE_EVENT_SUFFIX = ".event.json"
"""Sample event payloads (for ``triggerfish test``) may sit beside manifests."""

OTHER_ARGO_KINDS: frozenset[str] = frozenset({
    # Argo Workflows
    "Workflow", "WorkflowTemplate", "ClusterWorkflowTemplate", "CronWorkflow",
    "WorkflowEventBinding", "WorkflowTaskSet", "WorkflowTaskResult",
    "WorkflowArtifactGCTask",
    # Argo CD and Argo Rollouts
    "Application", "ApplicationSet", "AppProject", "Rollout", "AnalysisTemplate",
    "ClusterAnalysisTemplate", "AnalysisRun", "Experiment",
})  # fmt: skip
"""argoproj.io kinds of the other Argo projects: applied or recorded like any object.
Any other argoproj.io kind is refused, so a typo (``Sensr``) is not taken for one."""

MODELS: dict[str, type[SpecModel]] = {
    "EventBus": EventBus,
    "EventSource": EventSource,
    "Sensor": Sensor,
}

Manifest = EventBus | EventSource | Sensor
T = TypeVar("T")


class _Loader(yaml.SafeLoader):
    """Safe YAML loader that keeps timestamps as text, the way Kubernetes reads YAML
    (through JSON), so ``time: 2024-01-01`` stays a string, and that rejects a key given
    twice in one mapping instead of silently keeping the last value."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Mapping | list):
                continue  # unhashable; the base class reports it
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


@dataclass(frozen=True)
class Origin:
    """Where a document came from: its file and its 1-based number in that file."""

    file: str
    doc: int = 1
    docs_in_file: int = 1

    def __str__(self) -> str:
        return self.file if self.docs_in_file <= 1 else f"{self.file}#{self.doc}"


@dataclass
class Loaded(Generic[T]):
    """One successfully loaded object and where it came from."""

    origin: Origin
    obj: T

    @property
    def kind(self) -> str:
        """The object's kind."""
        return _kind_name(self.obj)[0]

    @property
    def name(self) -> str:
        """The object's ``metadata.name`` (``generateName`` when it has no name)."""
        return _kind_name(self.obj)[1]


@dataclass
class ManifestError:
    """One problem with one document: ``path: message`` (path may be empty)."""

    origin: Origin
    kind: str
    name: str
    path: str
    message: str
    namespace: str = ""

    def __str__(self) -> str:
        what = f" {object_label(self.kind, self.namespace, self.name)}" if self.kind else ""
        where = f"{self.path}: " if self.path else ""
        return f"{self.origin}{what}: {where}{self.message}"


@dataclass
class Document:
    """One document as read, in file order: its object when it loaded, else its errors."""

    origin: Origin
    kind: str
    name: str
    obj: Manifest | dict[str, Any] | None
    errors: list[ManifestError] = field(default_factory=list)
    namespace: str = ""

    @property
    def label(self) -> str:
        """``Kind namespace/name`` (``Kind name`` without a namespace), as messages say it."""
        return object_label(self.kind, self.namespace, self.name)


@dataclass
class LoadResult:
    """Everything found under the paths given, by kind, plus the problems."""

    event_buses: list[Loaded[EventBus]] = field(default_factory=list)
    event_sources: list[Loaded[EventSource]] = field(default_factory=list)
    sensors: list[Loaded[Sensor]] = field(default_factory=list)
    others: list[Loaded[dict[str, Any]]] = field(default_factory=list)
    errors: list[ManifestError] = field(default_factory=list)
    documents: list[Document] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every document loaded and is supported."""
        return not self.errors

    def add(self, document: Document) -> None:
        """Record one document under its kind (or its errors)."""
        self.documents.append(document)
        if document.errors:
            self.errors.extend(document.errors)
            return
        obj = document.obj
        if isinstance(obj, EventBus):
            self.event_buses.append(Loaded(document.origin, obj))
        elif isinstance(obj, EventSource):
            self.event_sources.append(Loaded(document.origin, obj))
        elif isinstance(obj, Sensor):
            self.sensors.append(Loaded(document.origin, obj))
        elif isinstance(obj, dict):
            self.others.append(Loaded(document.origin, obj))


class ManifestInvalid(ConfigError):
    """A manifest failed validation; ``lines`` holds one ``path: message`` per problem."""

    def __init__(self, kind: str, name: str, lines: list[str]) -> None:
        super().__init__("; ".join(lines), f"{kind}/{name}" if kind else "")
        self.kind = kind
        self.name = name
        self.lines = lines


def object_label(kind: str, namespace: str, name: str) -> str:
    """How messages name an object: ``Sensor argo-events/ml-pipeline-sensor``."""
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"


def _namespace(obj: Any) -> str:
    meta = getattr(obj, "metadata", None)
    if meta is not None and not isinstance(obj, Mapping):
        return str(getattr(meta, "namespace", "") or "")
    if isinstance(obj, Mapping) and isinstance(obj.get("metadata"), Mapping):
        return str(obj["metadata"].get("namespace") or "")
    return ""


def _kind_name(obj: Any) -> tuple[str, str]:
    if isinstance(obj, SpecModel):
        meta = getattr(obj, "metadata", None)
        name = (meta.name or meta.generate_name) if meta is not None else ""
        return str(getattr(obj, "kind", type(obj).__name__)), name
    if isinstance(obj, Mapping):
        meta = obj.get("metadata")
        name = ""
        if isinstance(meta, Mapping):
            name = str(meta.get("name") or meta.get("generateName") or "")
        kind = obj.get("kind")
        return (kind if isinstance(kind, str) else ""), name
    return "", ""


def _split_line(line: str) -> tuple[str, str]:
    path, sep, message = line.partition(": ")
    if not sep or " " in path:
        return "", line
    return path, message


def check_one(doc: Mapping[str, Any]) -> tuple[Manifest | dict[str, Any] | None, list[str]]:
    """Validate one object: the model (or the mapping, for other kinds) and its
    ``path: message`` problems; the object is ``None`` when it did not validate."""
    if not isinstance(doc, Mapping):
        return None, [f"a manifest must be a mapping, got {type(doc).__name__}"]
    api_version = doc.get("apiVersion")
    kind = doc.get("kind")
    missing = [k for k, v in (("apiVersion", api_version), ("kind", kind)) if not v]
    if missing:
        return None, [f"{k}: required field is missing" for k in missing]
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return None, ["apiVersion and kind must be strings"]
    group = api_version.split("/", 1)[0] if "/" in api_version else ""
    model = MODELS.get(kind)
    if group == "argoproj.io" and model is None and kind not in OTHER_ARGO_KINDS:
        return None, [
            f"kind: unknown argoproj.io kind {kind!r} (Triggerfish runs "
            f"{', '.join(MODELS)}; other Argo kinds such as Workflow and WorkflowTemplate "
            "are applied as they are)"
        ]
    if model is None or group != "argoproj.io":
        return dict(doc), []
    if api_version != API_VERSION:
        return None, [f"apiVersion: {kind} must be {API_VERSION}, got {api_version!r}"]
    try:
        obj = model.model_validate(dict(doc))
    except ValidationError as e:
        return None, format_validation_error(e)
    problems = unsupported(obj)
    if not problems and isinstance(obj, Sensor):
        problems = _compile_problems(obj)
    return (None if problems else cast(Manifest, obj)), problems


def _compile_problems(sensor: Sensor) -> list[str]:
    """What ``run`` would refuse when it builds this Sensor's runner (the same code)."""
    from app.compose.dryrun import offline_runner  # the runner imports the trigger modules

    try:
        offline_runner(sensor, read_files=False)
    except (ConfigError, ValueError) as e:
        return [str(e)]
    return []


def load_one(doc: Mapping[str, Any]) -> Manifest | dict[str, Any]:
    """Validate one object read from the API (or anywhere); raise
    :class:`ManifestInvalid` with every problem when it is invalid or unsupported."""
    obj, problems = check_one(doc)
    if problems or obj is None:
        kind, name = _kind_name(doc)
        raise ManifestInvalid(kind, name, problems)
    return obj


def _documents(path: Path) -> Iterator[tuple[int, Any] | str]:
    """The documents of one file (number, content), or an error line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        yield f"cannot read file: {e}"
        return
    if path.suffix == ".json":
        try:
            yield 1, json.loads(text)
        except json.JSONDecodeError as e:
            yield f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
        return
    number = 0
    try:
        for content in yaml.load_all(text, Loader=_Loader):
            number += 1
            yield number, content
    except yaml.YAMLError as e:
        yield _yaml_error(e)


def _yaml_error(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    context = getattr(e, "context", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    what = f"{context}, {problem}" if context else problem
    return f"invalid YAML{where}: {what}"


def load_file(path: str | Path, result: LoadResult | None = None) -> LoadResult:
    """Load every document of one file into ``result`` (a new one by default)."""
    result = result if result is not None else LoadResult()
    name = str(path)
    result.files.append(name)
    items = list(_documents(Path(path)))
    non_empty = sum(1 for item in items if not isinstance(item, str) and item[1] is not None)
    for item in items:
        if isinstance(item, str):
            origin = Origin(name)
            result.add(Document(origin, "", "", None, [ManifestError(origin, "", "", "", item)]))
            continue
        number, content = item
        if content is None:
            continue
        origin = Origin(name, number, non_empty)
        for obj in _expand_list(content):
            _add_object(result, origin, obj)
    return result


def _expand_list(content: Any) -> list[Any]:
    """A ``kind: List`` (what ``kubectl get -o yaml`` prints) stands for its items."""
    if (
        isinstance(content, dict)
        and content.get("kind") == "List"
        and isinstance(content.get("items"), list)
    ):
        return list(content["items"])
    return [content]


def _add_object(result: LoadResult, origin: Origin, content: Any) -> None:
    kind, name = _kind_name(content)
    namespace = _namespace(content)
    obj, problems = check_one(content)
    errors = [
        ManifestError(origin, kind, name, *_split_line(line), namespace=namespace)
        for line in problems
    ]
    result.add(Document(origin, kind, name, obj, errors, namespace))


def manifest_files(path: str | Path) -> list[Path]:
    """The manifest files under ``path``: itself when a file, else ``*.yaml``, ``*.yml``
    and ``*.json`` below it, recursively, sorted, hidden entries and sample events
    (``*.event.json``) skipped."""
    p = Path(path)
    if p.is_file():
        return [p]
    found: list[Path] = []
    for root, dirs, files in os.walk(p):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in files:
            if (
                not f.startswith(".")
                and f.endswith(MANIFEST_SUFFIXES)
                and not f.endswith(SAMPLE_EVENT_SUFFIX)
            ):
                found.append(Path(root) / f)
    return sorted(found)


def load_paths(paths: list[str] | list[Path]) -> LoadResult:
    """Load every manifest under ``paths`` (files or directories), in order."""
    result = LoadResult()
    for path in paths:
        p = Path(path)
        if not p.exists():
            origin = Origin(str(path))
            err = ManifestError(origin, "", "", "", "no such file or directory")
            result.add(Document(origin, "", "", None, [err]))
            continue
        for f in manifest_files(p):
            load_file(f, result)
    return result
