"""Fine-tuning under ``tf.distribute``: every training stage of a recipe on several devices or machines.

``Recipe(distribute=Distribute("mirrored"))`` trains on every GPU of one host (or, for tests, on a
CPU split into logical devices); ``Distribute("multi-worker")`` trains on every worker of the
cluster ``TF_CONFIG`` describes, as Kubernetes operators and Slurm's cluster resolvers set it
(``scripts/launch_workers.py`` does the same on one host). Every worker runs the same command:

    >>> recipe = Recipe.from_options(rate=0.8, distribute="multi-worker")
    >>> result = compress(model, data, recipe)         # on every worker, with its TF_CONFIG
    >>> if distribute.is_chief(): result.save("vgg.ecz")

What it guarantees:
- One global batch (``batch_size``) is split over the replicas; the optimizer sums the replicas'
  gradients, so a step is the single-process step. BatchNorm layers use the global batch's
  statistics while training (Keras's ``synchronized``), so moving statistics match too.
  QAT's activation ranges take the global batch's min/max. The centroid gradient (the sum over
  each centroid's weights) is summed over replicas after the per-replica sums.
- Masks are constraints applied in each replica's update, so pruned weights stay exactly 0 on every
  replica (``check_masks`` verifies it after every step, on every local copy).
- Only the chief writes (``is_chief``); the others compute the same state.
- A lost peer stops the rest (at once when its connections drop; within about 10 s, the heartbeat set in
  :mod:`edgecomp.distribute_compat`) with :class:`PeerLost`, whose message says how to resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time

import numpy as np

from edgecomp.cluster import Cluster, cluster_from_env, rendezvous  # noqa: F401  (re-exported)
from edgecomp.errors import EdgecompError, first_line
from edgecomp.pruning_config import Config

STRATEGIES = ("none", "mirrored", "multi-worker")


class PeerLost(EdgecompError):
    """A peer worker stopped or could not be reached while training (exit code 3)."""

    exit_code = 3


@dataclasses.dataclass(frozen=True)
class Distribute(Config):
    """How the fine-tuning stages are spread over devices.

    Args:
        strategy: ``none``; ``mirrored`` (one host, every GPU, or ``cpu_devices`` logical CPUs);
            ``multi-worker`` (the cluster in ``TF_CONFIG``).
        cpu_devices: ``mirrored`` only: split the CPU into this many logical devices (no GPU
            needed; for tests and for checking a recipe before a GPU run). 0: the GPUs.
        peer_timeout: ``multi-worker``: seconds to wait for every peer at start.
        check_masks: after every training step, read every replica's copy of each masked kernel
            and count pruned weights that are not exactly 0 (reported; costs a read per step).

    Example:
        >>> Distribute("mirrored", cpu_devices=2).get_config()["strategy"]
        'mirrored'
    """

    strategy: str = "none"
    cpu_devices: int = 0
    peer_timeout: float = 60.0
    check_masks: bool = False

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise EdgecompError(f"unknown distribution strategy '{self.strategy}'",
                                fix=f"use one of: {', '.join(STRATEGIES)}")
        n = self.cpu_devices
        if isinstance(n, bool) or not isinstance(n, int) or n < 0 or n == 1:
            raise EdgecompError(f"--cpu-devices must be 0 (use the GPUs) or a whole number >= 2, got {n!r}",
                                fix="e.g. --cpu-devices 2")
        if n and self.strategy != "mirrored":
            raise EdgecompError("--cpu-devices splits one host's CPU for --distribute mirrored",
                                fix="add --distribute mirrored, or drop --cpu-devices")
        try:
            timeout = float(self.peer_timeout)
        except (TypeError, ValueError):
            timeout = float("nan")
        if not 1 <= timeout <= 3600:
            raise EdgecompError(f"--peer-timeout must be 1..3600 seconds, got {self.peer_timeout!r}",
                                fix="e.g. --peer-timeout 60")
        object.__setattr__(self, "peer_timeout", timeout)
        object.__setattr__(self, "check_masks", bool(self.check_masks))

    @property
    def enabled(self) -> bool:
        return self.strategy != "none"


_MADE: dict = {}


def strategy_for(config: Distribute):
    """The ``tf.distribute`` strategy for ``config`` (None for ``none``), made once per process.

    Call it before TensorFlow runs anything when the strategy is ``multi-worker`` or splits the
    CPU (``edgecomp compress`` does); :func:`compress` calls it too.
    """
    if not config.enabled:
        return None
    key = (config.strategy, config.cpu_devices)
    if _MADE:
        if _MADE["key"] != key:
            raise EdgecompError(f"this process already trains with --distribute {_MADE['key'][0]}",
                                fix="use one distribution setting per process")
        return _MADE["strategy"]
    import tensorflow as tf

    from edgecomp import distribute_compat
    cluster = None
    if config.strategy == "mirrored":
        strategy = tf.distribute.MirroredStrategy(_mirrored_devices(config))
    else:
        cluster = cluster_from_env()
        rendezvous(cluster, config.peer_timeout)   # before TF is touched: a failure here leaves it as it was
        distribute_compat.configure_coordination(config.peer_timeout)
        # Last resort: a peer that answered the rendezvous but died before TF's own wait would leave
        # the constructor blocked in C++ with the GIL held; faulthandler's C thread ends the process.
        import faulthandler
        faulthandler.dump_traceback_later(config.peer_timeout + 30, exit=True)
        try:
            # AUTO: NCCL all-reduce between GPUs, TF's ring algorithm on CPUs
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as exc:
            if "must be configured at program startup" in str(exc) or "initialized" in str(exc):
                raise EdgecompError("multi-worker training must be set up before TensorFlow runs anything",
                                    fix="call edgecomp.distribute.strategy_for(config) first in your program") from None
            raise
        except tf.errors.OpError as exc:
            raise EdgecompError(f"{cluster.task_type} {cluster.task_index} could not serve on {cluster.address} "
                                f"({first_line(exc)})", fix="free the port, or give this worker another address") from None
        finally:
            faulthandler.cancel_dump_traceback_later()
    distribute_compat.patch_keras_fit()
    _MADE.update(key=key, strategy=strategy, cluster=cluster)
    return strategy


def prepare(config: Distribute, batch_size: int):
    """Make the strategy now (TF_CONFIG checked, peers reached) and check the global batch; the
    CLI's first step, so a mistake stops before anything is loaded or written."""
    strategy = strategy_for(config)
    if strategy is not None:
        Session(config, strategy).check_batch(batch_size)
    return strategy


def _mirrored_devices(config: Distribute):
    import tensorflow as tf
    if config.cpu_devices:
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * config.cpu_devices)
        except RuntimeError:
            if len(tf.config.list_logical_devices("CPU")) != config.cpu_devices:
                raise EdgecompError("the CPU can be split into logical devices only before TensorFlow runs anything",
                                    fix="call edgecomp.distribute.strategy_for(config) first in your program") from None
        return [d.name for d in tf.config.list_logical_devices("CPU")][:config.cpu_devices]
    if not tf.config.list_physical_devices("GPU"):
        raise EdgecompError("--distribute mirrored found no GPU on this host",
                            fix="run it where GPUs are, or pass --cpu-devices 2 to split the CPU (for checking)")
    return None


def is_chief() -> bool:
    """Whether this process writes outputs: always, except on a non-chief multi-worker task."""
    cluster = _MADE.get("cluster")
    return cluster is None or cluster.is_chief


def worker_name() -> str:
    cluster = _MADE.get("cluster")
    if cluster is None:
        return "single process"
    return f"{cluster.task_type} {cluster.task_index} of {cluster.size}"


class Session:
    """Where training runs (a strategy, or None on one device) and what each training run did:
    samples, seconds, global batch, learning rate (for the report)."""

    def __init__(self, config: Distribute, strategy=None):
        self.config = config
        self.strategy = strategy
        self.replicas = int(strategy.num_replicas_in_sync) if strategy is not None else 1
        self.runs: list[dict] = []
        self.mask_steps = 0
        self.mask_nonzero = 0

    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.replicas:
            raise EdgecompError(f"the global batch of {batch_size} does not divide by the {self.replicas} replicas",
                                fix=f"use a --batch-size that is a multiple of {self.replicas}")

    def adopt(self, model):
        """``model`` with its variables made under the strategy (a clone with the same weights and
        layer names when they were made outside it)."""
        if self.strategy is None or not model.weights or _distributed(model.weights[0]):
            return model
        import keras
        clone = keras.models.clone_model(model)
        clone.set_weights(model.get_weights())
        return clone

    @contextlib.contextmanager
    def training(self, model, *, samples: int, batch_size: int, epochs: int, learning_rate, title: str = "fit"):
        """Around one training run: the global batch is checked, BatchNorm synchronised, the time
        and sample count recorded, and a lost peer turned into :class:`PeerLost`."""
        import keras
        self.check_batch(batch_size)
        bns = [la for la in model._flatten_layers() if isinstance(la, keras.layers.BatchNormalization)
               and not la.synchronized] if self.strategy is not None else []
        for la in bns:
            la.synchronized = True
        start = time.perf_counter()
        try:
            yield
        except Exception as exc:  # noqa: BLE001  (only TF's peer errors are translated)
            lost = _peer_error(exc) if self.config.strategy == "multi-worker" else None
            if lost:
                raise PeerLost(f"{worker_name()}: a peer worker stopped or became unreachable while training ({lost})",
                               fix="restart every worker with the same command and --resume (the chief "
                                   "checkpointed every finished stage)") from None
            raise
        finally:
            for la in bns:
                la.synchronized = False
        self.runs.append({"title": title, "samples": int(samples) * int(epochs), "seconds": time.perf_counter() - start,
                          "global_batch": int(batch_size), "per_replica_batch": int(batch_size) // self.replicas,
                          "learning_rate": _rate_of(learning_rate)})

    def mask_check_callback(self, model):
        """A Keras callback counting pruned weights that are not 0 on any replica after each step."""
        import keras

        from edgecomp.pruning import _MaskConstraint
        held = [v for v in model.weights if isinstance(v.constraint, _MaskConstraint)]
        session = self

        class MaskCheck(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                session.mask_steps += 1
                for var in held:
                    pruned = var.constraint.mask.numpy() == 0   # read each step: a schedule may move it
                    for value in _local_values(var):
                        session.mask_nonzero += int(np.count_nonzero(value.numpy()[pruned]))
        return MaskCheck()

    def summary(self) -> dict:
        seconds = sum(r["seconds"] for r in self.runs)
        samples = sum(r["samples"] for r in self.runs)
        cluster = _MADE.get("cluster")
        out = {"strategy": self.config.strategy, "worker": worker_name(),
               "workers": cluster.size if cluster else 1, "replicas": self.replicas, "runs": self.runs,
               "samples": samples, "seconds": seconds, "samples_per_s": samples / seconds if seconds else None}
        if self.config.check_masks:
            out["mask_check"] = {"steps": self.mask_steps, "nonzero_pruned": self.mask_nonzero}
        return out


_ACTIVE: list[Session] = []


def active() -> Session | None:
    """The session :func:`session` opened (None outside one)."""
    return _ACTIVE[-1] if _ACTIVE else None


@contextlib.contextmanager
def session(config: Distribute | None):
    """Train under ``config``'s strategy inside the block; with ``none`` training runs as before and
    is only timed. Yields the :class:`Session`."""
    config = config or Distribute()
    strategy = strategy_for(config)
    ses = Session(config, strategy)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        _ACTIVE.append(ses)
        try:
            yield ses
        finally:
            _ACTIVE.pop()


def sync_range(lo, hi):
    """``(min, max)`` over the global batch: each replica's batch min/max reduced over replicas
    (no-op on one replica). For QAT's moving ranges."""
    import tensorflow as tf
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return lo, hi
    both = ctx.all_gather(tf.stack([tf.reshape(lo, []), tf.reshape(hi, [])])[None], axis=0)
    return tf.reduce_min(both[:, 0]), tf.reduce_max(both[:, 1])


def replica_slices(n: int, replicas: int) -> list[tuple[int, int]]:
    """How a global batch of ``n`` samples is split: replica r takes rows ``[a, b)``."""
    return [(r * n // replicas, (r + 1) * n // replicas) for r in range(replicas)]


def digest(model) -> str:
    """sha256 of every weight of ``model`` (in path order), to compare workers' final states."""
    import hashlib
    h = hashlib.sha256()
    for v in sorted(model.weights, key=lambda v: v.path):
        h.update(v.path.encode())
        h.update(np.ascontiguousarray(v.numpy()).tobytes())
    return h.hexdigest()


def _distributed(var) -> bool:
    import tensorflow as tf
    return isinstance(getattr(var, "value", var), tf.distribute.DistributedValues)


def _local_values(var):
    value = getattr(var, "value", var)
    return list(getattr(value, "values", [value]))


def _rate_of(learning_rate):
    try:
        return float(learning_rate)
    except TypeError:
        return {"schedule": type(learning_rate).__name__,
                "initial": float(getattr(learning_rate, "initial_learning_rate", float("nan")))}


def _peer_error(exc) -> str | None:
    """The first line of ``exc`` when it is TF's report of a lost or unreachable peer."""
    import tensorflow as tf
    errors = (tf.errors.UnavailableError, tf.errors.CancelledError, tf.errors.DeadlineExceededError,
              tf.errors.AbortedError)
    if not (isinstance(exc, errors) or (isinstance(exc, tf.errors.InternalError) and "ollective" in str(exc))):
        return None
    text = str(exc)
    cause = next((line.strip() for line in text.splitlines()
                  if re.search(r"reset by peer|is down|unhealthy|heartbeat|unreachable|Connection|Deadline|Socket", line)),
                 first_line(exc))
    cause = re.sub(r"^(Collective ops is aborted by: |Error reported from \S+ )+", "", cause).rstrip(":; ")
    peer = re.search(r"(/job:\w+/replica:\d+/task:\d+)", text)
    return (cause[:200] + (f"; peer {peer.group(1)}" if peer and peer.group(1) not in cause else ""))
