"""The layers of DESIGN §2 hold, a broken one is caught, and nothing imports in a cycle.

``lint-imports`` runs the contracts of ``pyproject.toml`` in ``.ci/run``; these tests show
that it passes on the tree as it is and fails, naming the import, when a module breaks a
layer (a sensor importing an event source, ``nats`` outside the bus adapter). They also
check what the registries promise: every entry loads and carries its config model, and
loading the spec models imports no plugin's client library.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

from eventsources.registry import REGISTRY
from sensors.triggers.registry import TRIGGERS

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "eventsources", "sensors")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _copy_tree(dest: Path) -> Path:
    for name in PACKAGES:
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", dest / "pyproject.toml")
    return dest


def test_contracts_hold_on_the_tree() -> None:
    res = _lint(REPO)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("sensors/runner.py", "import eventsources.webhook", "sensors.runner -> eventsources"),
        ("sensors/runner.py", "import nats", "sensors.runner -> nats"),
        ("app/kernel/events.py", "import app.adapters.bus", "app.kernel.events -> app.adapters"),
        ("eventsources/webhook.py", "import kubernetes", "eventsources.webhook -> kubernetes"),
        ("app/languages/paths.py", "import sensors.spec", "app.languages.paths -> sensors.spec"),
        # each client library stays in its own trigger module
        ("sensors/triggers/slack.py", "import nats", "sensors.triggers.slack -> nats"),
        ("sensors/triggers/nats.py", "import azure", "sensors.triggers.nats -> azure"),
    ],
)
def test_a_wrong_import_breaks_a_contract(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    tree = _copy_tree(tmp_path)
    path = tree / module
    path.write_text(path.read_text() + f"\n{line}  # noqa\n")
    res = _lint(tree)
    assert res.returncode == 1, res.stdout
    assert contract in res.stdout


def _cycles() -> list[list[str]]:
    """Strongly connected groups of two or more product modules (Tarjan)."""
    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True)
    modules = sorted(m for m in graph.modules if m.split(".")[0] in PACKAGES)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & set(modules)) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for m in modules:
        if m not in index:
            visit(m)
    return groups


def test_no_import_cycles() -> None:
    assert _cycles() == []


def test_every_registered_type_loads_with_its_config_model() -> None:
    from app.kernel.spec import SpecModel

    for registry in (REGISTRY, TRIGGERS):
        for key, cls in registry.load_all().items():
            assert issubclass(cls.config_model, SpecModel), key
            module = registry[key].partition(":")[0]
            assert cls.__module__ == module, f"{key}: config and implementation in one module"


HEAVY = [
    "aiobotocore", "botocore", "azure", "aiohttp", "nats", "nkeys", "kubernetes", "redis",
    "aiomqtt", "aio_pika",
]  # fmt: skip


@pytest.mark.parametrize(
    ("load", "allowed"),
    [
        ("import app.compose.manifests", ()),
        # every trigger module, as validating a Sensor that uses each type loads it; the
        # k8s trigger's Kubernetes adapter is built on aiohttp
        ("from sensors.triggers.registry import TRIGGERS; TRIGGERS.load_all()", ("aiohttp",)),
    ],
)
def test_loading_the_models_imports_no_client_library(load: str, allowed: tuple[str, ...]) -> None:
    """Validating manifests must not pull in every plugin's SDK: the registries are lazy,
    and trigger modules import their client library where they use it."""
    heavy = [m for m in HEAVY if m not in allowed]
    code = f"import sys\n{load}\nprint(','.join(m for m in {heavy!r} if m in sys.modules))\n"
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == ""
