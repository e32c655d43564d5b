"""The stand-in kubelet's container runtime for the image tier: Pods' containers run with podman.

What a real kubelet hands its runtime is turned into one `podman run` per container: the image
(never pulled: the tier builds its images locally, tests/images/build.sh), `command`/`args` as
the entrypoint and its arguments, the env (through a 0600 file, never the command line), every
volume bind-mounted at its mountPath (read-only where the mount says so), the termination
message file, and the security context: user and group, supplemental groups and fsGroup,
`runAsNonRoot` checked against the image's user, read-only root filesystem (without the tmpfs
podman would add: a Pod without a /tmp volume has none), dropped and added capabilities,
no-new-privileges, memory and CPU limits. Containers share the host network (the stand-in's Pod
IPs are loopback addresses) and reach the API server the in-cluster way: the token volume plus
KUBERNETES_SERVICE_HOST/PORT.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = REPO / "tests" / "images" / "containers.conf"
BUILD_SCRIPT = REPO / "tests" / "images" / "build.sh"
VERSION = "0.1.0"
RUNNER_IMAGE = f"localhost/dioptra-runner:{VERSION}"
OPERATOR_IMAGE = f"localhost/dioptra-operator:{VERSION}"

# What a restricted Pod's container gets (the operator's Jobs and the chart's Deployment), for
# running an image by hand the way the kubelet would.
RESTRICTED_FLAGS = (
    "--network=host",
    "--user=65532:65532",
    "--read-only",
    "--read-only-tmpfs=false",
    "--cap-drop=ALL",
    "--security-opt=no-new-privileges",
)

_QUANTITY = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "k": 1000, "M": 1000**2, "G": 1000**3}


class ConfigError(Exception):
    """The container cannot be created as specified (the kubelet's CreateContainerConfigError)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def environment() -> dict[str, str]:
    """The environment podman itself runs in: the tier's containers.conf."""
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], env=environment(), capture_output=True, text=True, check=check
    )


def unusable_reason() -> str | None:
    """Why this machine cannot run the image tier, in one line; None when it can."""
    if shutil.which("podman") is None:
        return "podman is not installed (make test installs it with apt-get: see tests/images)"
    missing = [image for image in (RUNNER_IMAGE, OPERATOR_IMAGE) if not image_present(image)]
    if missing:
        return f"{', '.join(missing)} not built: run bash {BUILD_SCRIPT.relative_to(REPO)}"
    probe = podman("run", "--rm", "--network=host", "--entrypoint=true", RUNNER_IMAGE, check=False)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        return f"podman cannot run a container here: {last}"
    return None


@dataclass(frozen=True)
class PodContext:
    """What the runtime needs to know of the Pod, besides the container."""

    namespace: str
    pod: str
    restarts: int
    folder: Path  # the Pod's folder on the host


def container_name(ctx: PodContext, container: str) -> str:
    return f"k8s_{container}_{ctx.pod}_{ctx.namespace}_{ctx.restarts}"


def image_user(image: str) -> str:
    found = podman("image", "inspect", "--format", "{{.Config.User}}", image, check=False)
    return found.stdout.strip()


def image_present(image: str) -> bool:
    return podman("image", "exists", image, check=False).returncode == 0


def _bytes(quantity: str) -> int:
    for suffix, factor in _QUANTITY.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(float(quantity))


def _cpus(quantity: str) -> str:
    return str(int(quantity[:-1]) / 1000) if quantity.endswith("m") else quantity


def _security(pod_spec: Mapping[str, Any], spec: Mapping[str, Any], image: str) -> list[str]:
    pod_sc = dict(pod_spec.get("securityContext") or {})
    sc = {**pod_sc, **(spec.get("securityContext") or {})}
    args: list[str] = []
    user = sc.get("runAsUser")
    group = sc.get("runAsGroup")
    if user is not None:
        args.append(f"--user={user}" + (f":{group}" if group is not None else ""))
    if sc.get("runAsNonRoot"):
        effective = str(user) if user is not None else image_user(image).split(":")[0]
        if effective in ("", "0", "root"):
            raise ConfigError(
                "CreateContainerConfigError",
                "container has runAsNonRoot and image will run as root",
            )
        if not effective.isdigit():
            raise ConfigError(
                "CreateContainerConfigError",
                f"container has runAsNonRoot and image has non-numeric user ({effective}), "
                "cannot verify user is non-root",
            )
    for gid in [*(pod_sc.get("supplementalGroups") or []), pod_sc.get("fsGroup")]:
        if gid is not None:
            args.append(f"--group-add={gid}")
    if sc.get("readOnlyRootFilesystem"):
        args += ["--read-only", "--read-only-tmpfs=false"]
    capabilities = sc.get("capabilities") or {}
    args += [f"--cap-drop={cap}" for cap in capabilities.get("drop") or []]
    args += [f"--cap-add={cap}" for cap in capabilities.get("add") or []]
    if sc.get("allowPrivilegeEscalation") is False:
        args.append("--security-opt=no-new-privileges")
    if sc.get("privileged"):
        args.append("--privileged")
    return args


def _limits(spec: Mapping[str, Any]) -> list[str]:
    limits = (spec.get("resources") or {}).get("limits") or {}
    args = []
    if "memory" in limits:
        args.append(f"--memory={_bytes(str(limits['memory']))}")
    if "cpu" in limits:
        args.append(f"--cpus={_cpus(str(limits['cpu']))}")
    return args


def run_command(
    ctx: PodContext,
    pod_spec: Mapping[str, Any],
    spec: Mapping[str, Any],
    env: Mapping[str, str],
    mounts: Mapping[str, Path],
    argv: tuple[list[str], list[str]],
) -> list[str]:
    """The `podman run` argv for one container; `argv` is (command, args), already expanded."""
    image = spec.get("image") or ""
    if not image_present(image):
        raise ConfigError(
            "ErrImageNeverPull",
            f'Container image "{image}" is not present on the node (the image tier builds '
            "its images locally and never pulls)",
        )
    name = container_name(ctx, spec["name"])
    podman("rm", "--force", "--time=0", name, check=False)
    env_file = ctx.folder / f"{spec['name']}.env"
    env_file.touch(mode=0o600)
    env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    message = ctx.folder / f"{spec['name']}.termination-log"
    message.touch()
    message.chmod(0o666)
    command, args = argv
    line = [
        "podman",
        "run",
        f"--name={name}",
        "--pull=never",
        "--network=host",
        "--sig-proxy=true",
        f"--env-file={env_file}",
        "--mount",
        f"type=bind,src={message},dst={spec.get('terminationMessagePath', '/dev/termination-log')}",
        *_security(pod_spec, spec, image),
        *_limits(spec),
    ]
    for path, folder in mounts.items():
        read_only = ",ro=true" if _read_only(spec, path) else ""
        line += ["--mount", f"type=bind,src={folder},dst={path}{read_only}"]
    if spec.get("workingDir"):
        line.append(f"--workdir={spec['workingDir']}")
    if command:
        line.append(f"--entrypoint={json.dumps(command)}")
    return [*line, image, *args]


def _read_only(spec: Mapping[str, Any], path: str) -> bool:
    return any(m["mountPath"] == path and m.get("readOnly") for m in spec.get("volumeMounts") or [])


def finished(ctx: PodContext, container: str) -> tuple[bool, str]:
    """After `podman run` returned: (OOM-killed?, termination message), then the container goes."""
    name = container_name(ctx, container)
    state = podman("inspect", "--format", "{{.State.OOMKilled}}", name, check=False)
    message = ""
    with contextlib.suppress(OSError):
        message = (ctx.folder / f"{container}.termination-log").read_text()
    podman("rm", "--force", "--time=0", name, check=False)
    return state.stdout.strip() == "true", message


def kill(ctx: PodContext, container: str) -> None:
    podman("kill", "--signal=KILL", container_name(ctx, container), check=False)


def remove(ctx: PodContext, container: str) -> None:
    """Nothing of a container outlives its Pod (podman's own process may be gone already)."""
    podman("rm", "--force", "--time=0", container_name(ctx, container), check=False)
