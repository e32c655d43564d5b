"""An entry point as a module: ``spec.entryPoint.module: acme.flows.items:flow``.

Importing this module only defines the flow; the runner fills its parameters from the
Experiment's ``spec.parameters`` and runs it.
"""

from dioptra import pyplugs
from dioptra.flow import Flow, Parameter

with Flow("Items") as flow:
    n, seed = Parameter("n"), Parameter("seed", default=0)
    items = pyplugs.call_task("acme.ops", "steps", "make_items", n=n, seed=seed)
    checked = pyplugs.call_task("acme.ops", "steps", "check_items", data=items)
    first, second = pyplugs.call_task("acme.ops", "steps", "split", data=items)
    summary = pyplugs.call_task(
        "acme.ops",
        "steps",
        "report",
        first=first,
        second=second,
        meta=items["meta"],
        upstream_tasks=[checked],  # ordering only: report waits for the check to pass
    )
