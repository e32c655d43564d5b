"""The bench's yardstick: the least a kopf operator can do per Experiment.

One Job per Experiment (adopted with `kopf.adopt`, created through the Kubernetes client, a 409
meaning it exists) and one status patch. `bench_operator.py` runs it with `kopf run` beside
ours, on the same control plane, with the same thread pool size as ours (16), so the
difference measures what our operator does beyond this.
"""

from __future__ import annotations

from typing import Any

import kopf
import kubernetes
from kubernetes.client.exceptions import ApiException


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.execution.max_workers = 16
    settings.posting.enabled = False
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()


@kopf.on.create("dioptra.dev", "v1alpha1", "experiments")
def create_job(
    body: kopf.Body, name: str, namespace: str, spec: kopf.Spec, patch: kopf.Patch, **_: Any
) -> None:
    job: dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": f"{name}-g1", "namespace": namespace},
        "spec": {
            "suspend": bool(spec.get("suspend", False)),
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "runner", "image": "dioptra-runner:bench"}],
                }
            },
        },
    }
    kopf.adopt(job, owner=body)
    try:
        kubernetes.client.BatchV1Api().create_namespaced_job(namespace, job, _preload_content=False)
    except ApiException as exc:
        if exc.status != 409:
            raise
    patch.status["jobName"] = job["metadata"]["name"]
