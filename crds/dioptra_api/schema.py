"""The Experiment CRD's schema, read from `crds/` and made usable outside the API server.

`crds/experiments.dioptra.dev.yaml` is the one schema of the project. This module finds it
(dev checkout or installed image), translates its Kubernetes-flavoured OpenAPI v3 into plain
JSON Schema that `jsonschema` can check, applies its defaults the way the API server would, and
evaluates its CEL rules through small Python equivalents (jsonschema cannot run CEL).
Pure functions apart from reading the file.
"""

from __future__ import annotations

import copy
import functools
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "CEL_EQUIVALENTS",
    "CRD_FILE_NAME",
    "apply_defaults",
    "cel_violations",
    "crd_version_schema",
    "find_crd_path",
    "load_crd",
    "to_json_schema",
]

CRD_FILE_NAME = "experiments.dioptra.dev.yaml"
CRD_PATH_ENV = "DIOPTRA_CRD_PATH"
VERSION = "v1alpha1"

_PACKAGE_DIR = Path(__file__).resolve().parent


def _candidate_paths() -> Iterator[Path]:
    """Where the CRD may be, best first.

    1. `$DIOPTRA_CRD_PATH` (explicit override, e.g. for a wheel installed without the data);
    2. `crds/` itself, beside this package (a dev checkout or editable install);
    3. inside the installed `dioptra_api` package: the Dockerfiles copy the CRD there just
       before building the wheel (package data), so the repository keeps one copy.
    """
    override = os.environ.get(CRD_PATH_ENV)
    if override:
        yield Path(override)
    yield _PACKAGE_DIR.parent / CRD_FILE_NAME
    yield _PACKAGE_DIR / CRD_FILE_NAME


def find_crd_path() -> Path:
    """Return the path of the Experiment CRD, or raise FileNotFoundError naming where it looked."""
    tried = []
    for path in _candidate_paths():
        if path.is_file():
            return path
        tried.append(str(path))
    raise FileNotFoundError(
        f"cannot find the Experiment CRD ({CRD_FILE_NAME}); looked in: {', '.join(tried)}; "
        f"set {CRD_PATH_ENV} to its path"
    )


def load_crd(path: Path | None = None) -> dict[str, Any]:
    """Read and parse the CRD manifest at `path`, or wherever `find_crd_path` finds it."""
    return _load_crd_file(path or find_crd_path())


@functools.cache
def _load_crd_file(crd_path: Path) -> dict[str, Any]:
    """Parse one CRD file (cached per path: it never changes while a process runs)."""
    document = yaml.safe_load(crd_path.read_text(encoding="utf-8"))
    if not isinstance(document, dict) or document.get("kind") != "CustomResourceDefinition":
        raise ValueError(f"{crd_path}: not a CustomResourceDefinition")
    return document


def crd_version_schema(crd: dict[str, Any], version: str = VERSION) -> dict[str, Any]:
    """Return the `openAPIV3Schema` of one served version of the CRD."""
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            schema: dict[str, Any] = entry["schema"]["openAPIV3Schema"]
            return schema
    raise KeyError(f"the CRD has no version {version!r}")


def to_json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """Translate a structural OpenAPI v3 schema into plain JSON Schema (Draft 2020-12).

    The API server's strict field validation rejects unknown fields; JSON Schema allows them.
    So an object node that lists `properties` gets `additionalProperties: false`, unless it has
    `x-kubernetes-preserve-unknown-fields: true` (the user's free-form data). Other
    `x-kubernetes-*` keys are dropped (CEL rules are checked by `cel_violations`),
    `x-kubernetes-int-or-string` becomes `type: [integer, string]` and `nullable` adds `null`.
    """
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key == "properties":
            out[key] = {name: to_json_schema(child) for name, child in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = to_json_schema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [to_json_schema(child) for child in value]
        else:
            out[key] = copy.deepcopy(value)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("anyOf", None)
        out["type"] = ["integer", "string"]
    if node.get("nullable") and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = [*types, "null"]
    preserve = node.get("x-kubernetes-preserve-unknown-fields", False)
    if node.get("type") == "object" and "properties" in node and not preserve:
        out.setdefault("additionalProperties", False)
    return out


def apply_defaults(node: dict[str, Any], value: Any) -> Any:
    """Return a copy of `value` with the schema's defaults filled in, as the API server does.

    Defaults apply to absent fields of objects that are present (never to a missing parent),
    recursively through `properties`, `additionalProperties` and `items`.
    """
    if isinstance(value, dict):
        result = dict(value)
        properties: dict[str, Any] = node.get("properties", {})
        for name, child in properties.items():
            if name in result:
                result[name] = apply_defaults(child, result[name])
            elif "default" in child:
                result[name] = apply_defaults(child, copy.deepcopy(child["default"]))
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            for name in result:
                if name not in properties:
                    result[name] = apply_defaults(extra, result[name])
        return result
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        return [apply_defaults(node["items"], item) for item in value]
    return value


def _exactly_one_entry_point(entry_point: Any) -> bool:
    kinds = ("module", "script", "configMapRef", "taskGraph")
    return sum(1 for kind in kinds if kind in entry_point) == 1


def _name_fits_a_label(root: Any) -> bool:
    name = root.get("metadata", {}).get("name", "")
    return not isinstance(name, str) or len(name) <= 63


def normalize_rule(rule: str) -> str:
    """Collapse whitespace so that a rule's YAML line folding does not change its identity."""
    return re.sub(r"\s+", "", rule)


CEL_EQUIVALENTS: dict[str, Callable[[Any], bool]] = {
    normalize_rule(
        "[has(self.module), has(self.script), has(self.configMapRef),"
        " has(self.taskGraph)].filter(x, x).size() == 1"
    ): _exactly_one_entry_point,
    normalize_rule("self.metadata.name.size() <= 63"): _name_fits_a_label,
}
"""Python twins of the CRD's CEL rules that need no old object (a test keeps them in step)."""


def is_transition_rule(rule: str) -> bool:
    """A rule that mentions `oldSelf` only runs on update; a file has no old object."""
    return "oldSelf" in rule


def cel_violations(node: dict[str, Any], value: Any, path: str = "") -> list[tuple[str, str]]:
    """Evaluate the schema's CEL rules on `value` through their Python twins.

    Returns `(path, message)` pairs. Walks only where the value's shape matches the schema
    (shape errors are jsonschema's to report). Transition rules are skipped; a rule without a
    Python twin is skipped too (the CRD tests fail if one exists).
    """
    found: list[tuple[str, str]] = []
    for entry in node.get("x-kubernetes-validations", []):
        rule = entry["rule"]
        if is_transition_rule(rule):
            continue
        check = CEL_EQUIVALENTS.get(normalize_rule(rule))
        if check is not None and isinstance(value, dict) and not check(value):
            found.append((path, entry.get("message", f"failed rule: {rule}")))
    if isinstance(value, dict):
        properties: dict[str, Any] = node.get("properties", {})
        extra = node.get("additionalProperties")
        for name, child_value in value.items():
            child = properties.get(name, extra if isinstance(extra, dict) else None)
            if child is not None:
                child_path = f"{path}.{name}" if path else name
                found.extend(cel_violations(child, child_value, child_path))
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for index, item in enumerate(value):
            found.extend(cel_violations(node["items"], item, f"{path}[{index}]"))
    return found
