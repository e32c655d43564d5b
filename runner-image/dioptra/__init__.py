"""The SDK that task plugins and entry points import: `pyplugs`, `flow`, `metrics`, `sdk`.

`from dioptra import pyplugs` and `from dioptra.flow import Flow, Parameter` are the
Dioptra-compatible entry points; nothing is imported here, so a plugin that only registers
functions never pays for Prefect.
"""

__all__ = ["flow", "graph", "metrics", "pyplugs", "sdk"]
