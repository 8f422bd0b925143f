"""The cluster a multi-worker run belongs to: ``TF_CONFIG`` parsed and checked, and a bounded
wait for the peers (:func:`rendezvous`) before TensorFlow's own, unbounded one.

    >>> cluster = cluster_from_env()          # raises EdgecompError naming what is wrong
    >>> rendezvous(cluster, timeout=60)       # every peer's process answers, or EdgecompError
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from edgecomp.errors import EdgecompError, first_line

#: Task types a MultiWorkerMirroredStrategy cluster may hold.
TASK_TYPES = ("chief", "worker")


@dataclasses.dataclass(frozen=True)
class Cluster:
    """The cluster ``TF_CONFIG`` describes: addresses by task type, and this process's task."""

    jobs: dict
    task_type: str
    task_index: int

    @property
    def address(self) -> str:
        return self.jobs[self.task_type][self.task_index]

    @property
    def size(self) -> int:
        return sum(len(v) for v in self.jobs.values())

    @property
    def is_chief(self) -> bool:
        """The chief task, or worker 0 when the cluster has none (TF's rule)."""
        if "chief" in self.jobs:
            return self.task_type == "chief"
        return self.task_index == 0

    def peers(self) -> list[str]:
        return [a for t, addrs in self.jobs.items() for i, a in enumerate(addrs)
                if (t, i) != (self.task_type, self.task_index)]


def _address(text) -> bool:
    if not isinstance(text, str) or text.count(":") < 1:
        return False
    host, _, port = text.rpartition(":")
    return bool(host) and port.isdigit() and 1 <= int(port) <= 65535


def cluster_from_env(environ=None) -> Cluster:
    """Parse and check ``TF_CONFIG``; raise EdgecompError naming what is wrong.

    Example:
        >>> cluster_from_env({"TF_CONFIG": '{"cluster": {"worker": ["127.0.0.1:2222"]}, '
        ...                   '"task": {"type": "worker", "index": 0}}'}).is_chief
        True
    """
    env = os.environ if environ is None else environ
    fix = "start the workers with scripts/launch_workers.py, or set TF_CONFIG as your cluster launcher does"
    text = env.get("TF_CONFIG")
    if not text:
        raise EdgecompError("--distribute multi-worker needs TF_CONFIG (the cluster and this worker's task), "
                            "which is not set", fix=fix)
    try:
        cfg = json.loads(text)
    except ValueError as exc:
        raise EdgecompError(f"TF_CONFIG is not valid JSON ({first_line(exc)})", fix=fix) from None
    cluster = cfg.get("cluster") if isinstance(cfg, dict) else None
    task = cfg.get("task") if isinstance(cfg, dict) else None
    if not isinstance(cluster, dict) or not cluster:
        raise EdgecompError("TF_CONFIG has no 'cluster' mapping of task types to address lists", fix=fix)
    bad = sorted(set(cluster) - set(TASK_TYPES))
    if bad:
        raise EdgecompError(f"TF_CONFIG's cluster has task type '{bad[0]}', which multi-worker training does not use",
                            fix=f"list only {' and '.join(TASK_TYPES)} tasks")
    for kind, addrs in cluster.items():
        if not isinstance(addrs, list) or not addrs or not all(_address(a) for a in addrs):
            raise EdgecompError(f"TF_CONFIG's cluster '{kind}' must be a list of 'host:port' addresses, got {addrs!r}"[:200],
                                fix=fix)
    if len(cluster.get("chief", [])) > 1:
        raise EdgecompError("TF_CONFIG's cluster has more than one chief", fix="list one chief address")
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise EdgecompError(f"TF_CONFIG's task {task!r} names no task type of its cluster"[:200],
                            fix="set task to {\"type\": \"worker\", \"index\": N}")
    index = task.get("index")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[task["type"]]):
        raise EdgecompError(f"TF_CONFIG's task index {index!r} is not in 0..{len(cluster[task['type']]) - 1}",
                            fix="give each worker its own index into the cluster's list")
    return Cluster({k: list(v) for k, v in cluster.items()}, task["type"], index)


#: The one strategy of this process (TF allows one multi-worker strategy, made before any op).


def _reachable(address: str, timeout: float = 0.5) -> bool:
    import socket
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
        return True
    except OSError:
        return False


def rendezvous(cluster: Cluster, timeout: float) -> None:
    """Wait until every peer's process answers on its address, for at most ``timeout`` s.

    TF 2.21 waits for the cluster inside the strategy's constructor, in C++, holding the GIL and
    without a limit (the coordination service's register timeout is not applied there), so the
    wait is bounded here first, in Python: each worker listens on its own address (freed again
    before TF serves on it) and connects to every peer. A peer is reached once its listener or
    its TF server accepts. Raises EdgecompError naming the silent peers.
    """
    import socket
    _, _, port = cluster.address.rpartition(":")
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("", int(port)))
        listener.listen(64)
    except OSError as exc:
        listener.close()
        raise EdgecompError(f"{cluster.task_type} {cluster.task_index} could not serve on {cluster.address} "
                            f"({exc.strerror or exc})", fix="free the port, or give this worker another address") from None
    pending = cluster.peers()
    deadline = time.monotonic() + timeout
    try:
        while pending and time.monotonic() < deadline:
            pending = [a for a in pending if not _reachable(a)]
            if pending:
                time.sleep(0.2)
    finally:
        listener.close()
    if pending:
        raise EdgecompError(f"{cluster.task_type} {cluster.task_index} ({cluster.address}) could not reach its peers "
                            f"within {timeout:g} s (no answer from {', '.join(pending)})",
                            fix="start every worker of TF_CONFIG's cluster, check the addresses, or raise --peer-timeout")
