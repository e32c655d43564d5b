"""Load an Experiment (a YAML file for `dioptra run`, or JSON from the Job's env) and validate it.

Validation uses the CRD's own `openAPIV3Schema` (see `dioptra_api.schema`), so a file that
`dioptra run` accepts is one that `kubectl apply` accepts, and the user sees every problem at
once, each with its field path (`spec.plugins.sources[0]: ...`), instead of a traceback.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from dioptra_api import API_VERSION, DNS_LABEL_MAX, EXPERIMENT_ENV, KIND, VERSION
from dioptra_api import schema as crd_schema

__all__ = [
    "API_VERSION",
    "KIND",
    "Experiment",
    "ExperimentError",
    "experiment_from_document",
    "experiment_from_env",
    "load_experiment_file",
    "load_experiment_text",
    "validate_document",
    "validate_status",
]

_NAME_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_NAME_MAX = DNS_LABEL_MAX  # the name is a label value on the Job (dioptra.dev/experiment)


class ExperimentError(ValueError):
    """An Experiment that cannot be used, with every reason found.

    `errors` lists one line per problem, each starting with its field path when it has one.
    `str()` is one line for one problem and a header plus one bullet per problem otherwise.
    """

    def __init__(self, errors: list[str], source: str | None = None) -> None:
        self.errors = list(errors)
        self.source = source
        super().__init__(self._render())

    def _render(self) -> str:
        where = f"{self.source}: " if self.source else ""
        if len(self.errors) == 1:
            return f"{where}{self.errors[0]}"
        bullets = "\n".join(f"  - {error}" for error in self.errors)
        return f"{where}invalid Experiment ({len(self.errors)} problems):\n{bullets}"

    def __str__(self) -> str:
        return self._render()


@dataclass(frozen=True)
class Experiment:
    """A validated Experiment: identity, the spec with the CRD's defaults applied, and origin.

    `source_path` is the file it came from (None for the in-pod snapshot); local plugin
    sources are resolved against that file's folder.
    """

    name: str
    namespace: str | None
    generation: int | None
    spec: dict[str, Any]
    source_path: Path | None = None

    @property
    def base_dir(self) -> Path:
        """The folder relative plugin sources are resolved against (the file's, else cwd)."""
        return self.source_path.parent if self.source_path else Path.cwd()

    @property
    def plugin_sources(self) -> list[str]:
        """`spec.plugins.sources` as written (empty when the Experiment needs no sync)."""
        sources: list[str] = self.spec.get("plugins", {}).get("sources", [])
        return list(sources)

    def resolve_plugin_source(self, source: str) -> str:
        """Return an S3 URI unchanged and a local folder as an absolute path.

        `file:///abs` becomes `/abs`; `~` is expanded; a relative folder is taken relative to
        the Experiment file's folder (so `./plugins/` works from any working directory). A
        trailing slash is kept: it means "the folder's contents" to the sync, as with rsync.
        """
        if source.startswith("s3://"):
            return source
        slash = "/" if source.endswith("/") else ""
        if source.startswith("file://"):
            return str(Path(source[len("file://") :]).resolve()) + slash
        path = Path(source).expanduser()
        if not path.is_absolute():
            path = self.base_dir / path
        return str(path.resolve()) + slash

    def resolved_plugin_sources(self) -> list[str]:
        """All plugin sources, local folders made absolute (see `resolve_plugin_source`)."""
        return [self.resolve_plugin_source(source) for source in self.plugin_sources]

    @property
    def entry_point_kind(self) -> str:
        """Which entry point is set: "module", "script", "configMapRef" or "taskGraph"."""
        for kind in ("module", "script", "configMapRef", "taskGraph"):
            if kind in self.spec["entryPoint"]:
                return kind
        raise AssertionError("validated Experiments have exactly one entry point")


@functools.cache
def _schemas() -> tuple[dict[str, Any], dict[str, Any]]:
    """The CRD's OpenAPI schema and its JSON Schema translation (built once per process)."""
    openapi = crd_schema.crd_version_schema(crd_schema.load_crd(), VERSION)
    return openapi, crd_schema.to_json_schema(openapi)


def _format_path(parts: list[str | int]) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def _describe(error: jsonschema.ValidationError) -> list[tuple[str, str]]:
    """Turn one jsonschema error into `(path, message)` pairs in kubectl's words."""
    parts: list[str | int] = list(error.absolute_path)
    path = _format_path(parts)
    node: Mapping[str, Any] = error.schema if isinstance(error.schema, Mapping) else {}
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = node.get("properties", {})
        return [
            (_format_path([*parts, name]), "unknown field")
            for name in error.instance
            if name not in allowed
        ]
    if error.validator == "required":
        missing = re.match(r"'([^']+)' is a required property", error.message)
        if missing:
            return [(_format_path([*parts, missing.group(1)]), "required field is missing")]
    branches = error.validator_value if error.validator == "oneOf" else None
    if isinstance(branches, list) and all(set(branch) == {"required"} for branch in branches):
        # The schema's "exactly one of these fields" (a oneOf of `required` branches).
        names = " or ".join(name for branch in branches for name in branch["required"])
        return [(path, f"exactly one of {names} must be set")]
    if error.validator == "pattern":
        # The regex itself is noise to a user; the field's description says what is expected.
        hint = " ".join(str(node.get("description", "")).split())
        if hint:
            return [(path, f"{error.instance!r} is not valid (expected: {hint})")]
        return [(path, f"{error.instance!r} does not match {error.validator_value!r}")]
    return [(path, error.message)]


def _metadata_errors(metadata: Any) -> list[tuple[str, str]]:
    if not isinstance(metadata, dict):
        return [("metadata", "required object with a name is missing")]
    name = metadata.get("name")
    if name is None:
        return [("metadata.name", "required field is missing")]
    if not isinstance(name, str) or not _NAME_PATTERN.match(name) or len(name) > _NAME_MAX:
        return [
            (
                "metadata.name",
                f"{name!r} is not a valid name (lowercase letters, digits and '-', "
                f"starting and ending with a letter or digit, at most {_NAME_MAX} characters)",
            )
        ]
    return []


def validate_document(document: Any) -> list[str]:
    """Return every problem of an Experiment document as `path: message` lines (empty if valid).

    Checks apiVersion and kind, metadata.name, the spec against the CRD schema (unknown fields
    rejected as the API server's strict field validation does) and the CRD's CEL rules.
    """
    if not isinstance(document, dict):
        return [f"expected a mapping (an Experiment), got {type(document).__name__}"]
    found: list[tuple[str, str]] = []
    if document.get("apiVersion") != API_VERSION:
        found.append(("apiVersion", f"must be {API_VERSION}, got {document.get('apiVersion')!r}"))
    if document.get("kind") != KIND:
        found.append(("kind", f"must be {KIND}, got {document.get('kind')!r}"))
    found.extend(_metadata_errors(document.get("metadata")))
    openapi, json_schema = _schemas()
    validator = jsonschema.Draft202012Validator(json_schema)
    body = {key: value for key, value in document.items() if key != "metadata"}
    for error in validator.iter_errors(body):
        found.extend(_describe(error))
    found.extend(crd_schema.cel_violations(openapi, body))
    unique = sorted(set(found), key=lambda item: (item[0], item[1]))
    return [f"{path}: {message}" if path else message for path, message in unique]


def validate_status(status: Any) -> list[str]:
    """Return every problem of a `status` object (or merge patch) against the CRD's schema.

    For tests of the runner's and operator's status writes: the API server rejects a patch whose
    result does not match the schema, and the emulator used in tests does not check it.
    """
    _, json_schema = _schemas()
    validator = jsonschema.Draft202012Validator(json_schema["properties"]["status"])
    found: list[tuple[str, str]] = []
    for error in validator.iter_errors(status):
        for path, message in _describe(error):
            found.append((f"status.{path}" if path else "status", message))
    return [f"{path}: {message}" for path, message in sorted(set(found))]


def experiment_from_document(document: Any, source_path: Path | None = None) -> Experiment:
    """Validate a parsed document and return the Experiment, or raise ExperimentError."""
    source = str(source_path) if source_path else None
    errors = validate_document(document)
    if errors:
        raise ExperimentError(errors, source=source)
    openapi, _ = _schemas()
    spec = crd_schema.apply_defaults(openapi["properties"]["spec"], document["spec"])
    metadata = document["metadata"]
    generation = metadata.get("generation")
    return Experiment(
        name=metadata["name"],
        namespace=metadata.get("namespace"),
        generation=generation if isinstance(generation, int) else None,
        spec=spec,
        source_path=source_path,
    )


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping, as `kubectl apply` does.

    PyYAML keeps the last value silently: a parameter set twice would run with whichever
    came second, and the user would never know.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                earlier = first_seen.setdefault(key, key_node)
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if earlier is not key_node:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first given at line {earlier.start_mark.line + 1})",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def _yaml_error_line(error: yaml.YAMLError) -> str:
    """One line saying where the YAML is broken, e.g. `line 4, column 7: ...`."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    if mark is not None:
        return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return f"invalid YAML: {problem}"


def _pick_document(documents: list[Any]) -> Any:
    """The first `kind: Experiment` document, else the only one (validation then says why)."""
    for document in documents:
        if isinstance(document, dict) and document.get("kind") == KIND:
            return document
    present = [d for d in documents if d is not None]
    if len(present) == 1:
        return present[0]
    if not present:
        raise ExperimentError(["the file is empty (expected an Experiment)"])
    kinds = ", ".join(
        str(d.get("kind")) if isinstance(d, dict) else type(d).__name__ for d in present
    )
    raise ExperimentError([f"no document has kind: {KIND} (found: {kinds})"])


def load_experiment_text(text: str, source_path: Path | None = None) -> Experiment:
    """Parse YAML text holding one Experiment (or several documents, the first Experiment wins)."""
    source = str(source_path) if source_path else None
    try:
        documents = list(yaml.load_all(text, Loader=_StrictLoader))  # a SafeLoader
    except yaml.YAMLError as error:
        raise ExperimentError([_yaml_error_line(error)], source=source) from None
    try:
        document = _pick_document(documents)
    except ExperimentError as error:
        raise ExperimentError(error.errors, source=source) from None
    return experiment_from_document(document, source_path=source_path)


def load_experiment_file(path: str | Path) -> Experiment:
    """Read and validate an Experiment file; the path is kept to resolve local plugin folders."""
    file_path = Path(path)
    try:
        text = file_path.read_text(encoding="utf-8")
    except OSError as error:
        raise ExperimentError([f"cannot read the file: {error.strerror}"], str(file_path)) from None
    except UnicodeDecodeError:
        raise ExperimentError(["the file is not UTF-8 text"], source=str(file_path)) from None
    return load_experiment_text(text, source_path=file_path.resolve())


def experiment_from_env(json_text: str) -> Experiment:
    """Parse the `DIOPTRA_EXPERIMENT` snapshot the operator puts into the runner's env."""
    try:
        document = json.loads(json_text)
    except json.JSONDecodeError as error:
        raise ExperimentError(
            [f"invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}"],
            source=EXPERIMENT_ENV,
        ) from None
    try:
        return experiment_from_document(document)
    except ExperimentError as error:
        raise ExperimentError(error.errors, source=EXPERIMENT_ENV) from None
