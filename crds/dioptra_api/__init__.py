"""The Experiment API shared by the operator, the runner and the tests (JobSet's `api/` role).

`import dioptra_api as api` gives the vocabulary (`api.GROUP`, `api.Phase`, `api.Reason`...);
the submodules hold the rest: `conditions` (metav1.Condition merging), `schema` (the CRD file,
its JSON Schema and defaults), `sweep` (points and summaries) and `clock` (times, durations).
Pure: no Kubernetes client, no Prefect, no I/O beyond reading the CRD file.
"""

from dioptra_api.vocabulary import *  # noqa: F403
from dioptra_api.vocabulary import __all__ as _vocabulary

__all__ = list(_vocabulary)
