"""Joining a Ray cluster, with one-line errors for what goes wrong before any work starts.

* Ray is an optional extra: :func:`require_ray` says how to install it.
* :func:`connect`: no address = a local cluster on this machine, reachable from this machine only (every Ray
  process listens on 127.0.0.1, not on the node's network address); ``"auto"`` = the cluster this machine belongs to
  (``ray start --head`` / ``ray start --address``); ``"host:port"`` (or ``ray://host:port``) = that cluster, checked
  for reachability first so that a wrong address fails in seconds, not after Ray's own minute of retries.
* :func:`check_resources`: a request the cluster cannot satisfy (GPUs it does not have) is an error, not a job that
  waits forever.
* :func:`check_shared_folder`: every node must see the cache and output folders (a shared filesystem), since
  workers read and write them directly.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["RayUnavailable", "ClusterError", "require_ray", "connect", "check_resources", "check_shared_folder",
           "blind_nodes", "actor_cpus", "INSTALL_HINT", "RUNTIME_ENV_VARS"]

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'clip-adapter[ray]' (or pip install 'ray[data]')"
# Environment variables the workers need to behave like the driver (offline hub, the same caches and data root).
RUNTIME_ENV_VARS = ("HF_HUB_OFFLINE", "CLIP_ADAPTER_CACHE", "CLIP_ADAPTER_SHARED_CACHE", "CLIP_ADAPTER_DATA",
                    "CLIP_ADAPTER_LOCK_TIMEOUT")


class RayUnavailable(RuntimeError):
    """``--ray`` was asked for but Ray is not installed."""


class ClusterError(RuntimeError):
    """The cluster cannot run the job as configured (unreachable, missing resources, unshared folders)."""


def require_ray():
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is part of the extra
    except ImportError:
        raise RayUnavailable(f"Running on Ray needs Ray and Ray Data: {INSTALL_HINT}.") from None
    return ray


def _reachable(address: str, timeout: float = 5.0) -> None:
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise ClusterError(f"Ray address {address!r} must be 'auto', host:port or ray://host:port.")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ClusterError(f"Ray cluster at {address} is unreachable ({e.strerror or e}); start it with `ray start "
                           f"--head` on that machine, or check the address (`ray status` prints it).") from None


LOOPBACK = "127.0.0.1"


@contextlib.contextmanager
def _loopback_only(ray: Any) -> Iterator[None]:
    """While starting a local cluster, make Ray take 127.0.0.1 as this node's address: on Linux ``ray.init`` maps a
    loopback ``_node_ip_address`` to the network address unless multi-node clusters are off (as on macOS/Windows),
    and every Ray process then listens on that address. A single-machine run has nothing to offer the network."""
    constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
    if constants is None or not hasattr(constants, "ENABLE_RAY_CLUSTER"):  # pragma: no cover - another Ray layout
        log.warning("This Ray version may start its local cluster on the network address, not only 127.0.0.1.")
        yield
        return
    before = constants.ENABLE_RAY_CLUSTER
    constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = before


def connect(address: str | None = None, *, num_cpus: int | None = None, quiet: bool = True) -> Any:
    """Join (or start) a Ray cluster once per process and return the ``ray`` module.

    Args:
        address: ``None`` starts a local cluster on this machine, bound to 127.0.0.1 (``num_cpus``: its size,
            default all cores);
            ``"auto"`` joins the cluster this machine is part of; ``"host:port"`` / ``"ray://host:port"`` that one.
    """
    ray = require_ray()
    if ray.is_initialized():
        return ray
    env = {k: os.environ[k] for k in RUNTIME_ENV_VARS if k in os.environ}
    kw: dict[str, Any] = {"runtime_env": {"env_vars": env} if env else None, "include_dashboard": False,
                          "log_to_driver": not quiet, "configure_logging": True,
                          "logging_level": logging.WARNING if quiet else logging.INFO}
    if address is None:
        kw["num_cpus"], kw["_node_ip_address"] = num_cpus, LOOPBACK
    elif address != "auto":
        _reachable(address)
    try:
        with _loopback_only(ray) if address is None else contextlib.nullcontext():
            ray.init(address=address, **{k: v for k, v in kw.items() if v is not None})
    except ConnectionError as e:
        reason = " ".join(str(e).split())[:200]
        raise ClusterError(f"Could not join the Ray cluster at {address or 'local'} ({reason}); for 'auto', start "
                           f"one first with `ray start --head`.") from None
    log.info("Ray cluster: %s", {k: v for k, v in ray.cluster_resources().items() if not k.startswith("node:")})
    return ray


def check_resources(ray: Any, *, gpus: float = 0.0, cpus: float = 1.0, what: str = "each run") -> dict[str, float]:
    """The cluster's total CPU/GPU count; an error when ``what`` asks for more than one node could give."""
    total = ray.cluster_resources()
    have_gpu, have_cpu = float(total.get("GPU", 0)), float(total.get("CPU", 0))
    if gpus > 0 and have_gpu < gpus:
        raise ClusterError(f"The config asks for {gpus:g} GPU(s) for {what}, but the Ray cluster has {have_gpu:g}; "
                           f"use backbone.device: cpu (or gpus_per_run: 0), or add GPU nodes.")
    if cpus > have_cpu:
        raise ClusterError(f"The config asks for {cpus:g} CPU(s) for {what}, but the Ray cluster has {have_cpu:g}.")
    return {"CPU": have_cpu, "GPU": have_gpu}


def actor_cpus(total_cpus: float, n_actors: int, gpus: float) -> float:
    """CPUs each actor of a Ray Data pool asks for: 1 on the CPU, but never so many that no CPU is left for the
    decoding tasks that feed the pool (they ask for 0.25 each), which would stall the pipeline."""
    if gpus:
        return 0.5
    return max(0.25, min(1.0, (total_cpus - 0.5) / max(n_actors, 1)))


def _sees(path: str, token: str) -> bool:
    return (Path(path) / token).is_file()


def blind_nodes(ray: Any, nodes: list[dict], folder: Path, token: str) -> list[str]:
    """The addresses of the ``nodes`` on which a task pinned there does not see ``folder / token``."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0)(_sees)
    refs = {n["NodeManagerAddress"]: probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        n["NodeID"], soft=False)).remote(str(folder), token) for n in nodes}
    return [addr for addr, ok in zip(refs, ray.get(list(refs.values()))) if not ok]


def check_shared_folder(ray: Any, folder: str | os.PathLike, what: str) -> None:
    """Every alive node must see ``folder`` (the same path, the same files): a probe file written here is looked for
    by one task pinned to each node. Single-node clusters pass at once."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1:
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    token = f".ray-probe-{uuid.uuid4().hex}"
    (folder / token).write_text("probe")
    try:
        blind = blind_nodes(ray, nodes, folder, token)
    finally:
        (folder / token).unlink(missing_ok=True)
    if blind:
        raise ClusterError(f"The {what} {folder} is not visible from node(s) {', '.join(blind)}: Ray workers there "
                           f"read and write it directly; put it on a filesystem every node mounts at the same path.")
