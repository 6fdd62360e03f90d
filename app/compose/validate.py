"""``triggerfish validate FILES_OR_DIRS``: check manifests without running anything.

Prints one line per manifest, in file order::

    ok   sensors/ml.yaml Sensor/ml-pipeline-sensor
    error sensors/bad.yaml#2 Sensor/x: spec.dependecies: unknown field

(one ``error`` line per problem; ``#N`` is the document number in a multi-document
file), then one ``warning`` line per cross-object finding (:mod:`app.compose.crosscheck`:
a dependency no EventSource in the set serves, two EventSources on one port). Every
Sensor is also compiled the way ``run`` compiles it (:mod:`app.compose.dryrun`), so
``validate --strict`` passing means ``run`` loads the same files. Exit status: 0 when
everything loaded and is supported, 1 on any error (or warning, with ``strict``), 2
when no manifest was found. The CLI wires this to the ``validate`` command.
"""

from __future__ import annotations

from typing import TextIO

from app.compose.crosscheck import cross_checks
from app.compose.manifests import load_paths

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_NOTHING_FOUND = 2


def validate_paths(paths: list[str], out: TextIO, *, strict: bool = False) -> int:
    """Validate every manifest under ``paths``, report to ``out``, return the exit code."""
    result = load_paths(paths)
    if not result.documents:
        where = ", ".join(paths) if paths else "(no paths given)"
        out.write(f"error no manifests found in {where}\n")
        return EXIT_NOTHING_FOUND
    for doc in result.documents:
        what = f" {doc.label}" if doc.kind else ""
        if not doc.errors:
            out.write(f"ok   {doc.origin}{what}\n")
            continue
        for err in doc.errors:
            where = f"{err.path}: " if err.path else ""
            out.write(f"error {doc.origin}{what}: {where}{err.message}\n")
    findings = cross_checks(result)
    label = "error" if strict else "warning"
    for f in findings:
        out.write(f"{label} {f}\n")
    return EXIT_INVALID if result.errors or (strict and findings) else EXIT_OK
