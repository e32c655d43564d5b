"""The Dioptra operator: one Job per Experiment generation, with truthful status.

Modules, one concern each:
- `constants`: API names, label keys, phases, condition types and reasons with messages.
- `settings`: the chart's `DIOPTRA_*` environment, read once at startup.
- `job_builder`, `status_mapping`, `conditions`: pure functions (no kopf, no client calls).
- `k8s`: the only module that talks to the Kubernetes API.
- `reconcile`: the work (ensure the Job, mirror Job/Pod state), called by `handlers`.
- `handlers`: the thin `@kopf` handlers; `metrics`: Prometheus gauges and counters.
- `__main__`: the `dioptra-operator` console script and kopf's settings.
"""
