"""Version-specific workarounds for ``tf.distribute``, in one place.

**Keras 3 ``model.fit`` under MultiWorkerMirroredStrategy** (keras-team/keras#20585, open;
tensorflow/tensorflow#72388). Seen on Keras 3.15.1 with TensorFlow 2.21.0, reported since Keras 3.0
with TF 2.16. Two calls in ``keras/src/backend/tensorflow/trainer.py`` treat a multi-worker
strategy like a one-host one:

1. ``TensorFlowTrainer._maybe_symbolic_build`` reduces the first distributed input batch with
   ``strategy.reduce("MEAN", batch, axis=None)`` only to learn its shapes. The collective
   implementation cannot reduce a nested structure, and ``fit`` fails before its first step with
   "Attempt to convert a value (PerReplica:{...}) ... to a Tensor".
2. ``reduce_per_replica`` reduces each step's logs with ``strategy.reduce("MEAN", v, axis=0)``;
   the logs are scalars: "Invalid reduction dimension 0 for input with 0 dimensions".

:func:`patch_keras_fit` wraps both, for multi-worker strategies only: the build takes this
worker's own first replica batch (its shapes are what the build needs), and scalar logs are
reduced with ``axis=None`` (the mean over every replica of every worker). One-host strategies keep
Keras's code. ``EDGECOMP_NO_KERAS_MWMS_FIX=1`` leaves Keras alone (the test that shows the bug).

**MultiWorkerMirroredStrategy's health check** (TF 2.4 .. 2.21, private class attributes of
``CollectiveAllReduceExtended``): by default it waits forever for the cluster at start and checks
peers every 30 s with three 10 s tries, so a lost worker leaves the rest blocked in an all-reduce
for up to a minute. :func:`tune_health_check` sets a bounded start-up wait and a 5 s check (the
survivors stop within about 20 s).
"""

from __future__ import annotations

import os

_PATCHED: list = []


def patch_keras_fit() -> bool:
    """Apply the Keras multi-worker ``fit`` workaround once; returns whether it is applied."""
    if _PATCHED:
        return True
    if os.environ.get("EDGECOMP_NO_KERAS_MWMS_FIX") == "1":
        return False
    import tensorflow as tf
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer

    multi_worker = trainer._collective_all_reduce_multi_worker
    build, reduce_per_replica = trainer.TensorFlowTrainer._maybe_symbolic_build, trainer.reduce_per_replica

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is None or self._distribute_strategy is None or not multi_worker(self.distribute_strategy):
            return build(self, iterator=iterator, data_batch=data_batch)
        strategy = self.distribute_strategy
        for _, _, it in iterator:
            batch = next(it)
            break
        local = tree.map_structure(lambda v: strategy.experimental_local_results(v)[0]
                                   if isinstance(v, tf.distribute.DistributedValues) else v, batch)
        return build(self, data_batch=local)

    def _reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and multi_worker(strategy):
            return tree.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=0 if v.shape.rank else None), values)
        return reduce_per_replica(values, strategy, reduction)

    trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    trainer.reduce_per_replica = _reduce_per_replica
    _PATCHED.append(True)
    return True


#: Seconds between peer health checks, per check, and the tries before a peer counts as lost.
HEALTH_INTERVAL_S, HEALTH_TIMEOUT_S, HEALTH_TRIES = 5, 5, 2


def tune_health_check(peer_timeout: float) -> None:
    """Bound MultiWorkerMirroredStrategy's wait for the cluster (``peer_timeout`` s) and its peer checks."""
    from tensorflow.python.distribute import collective_all_reduce_strategy as cars
    ext = cars.CollectiveAllReduceExtended
    ext._check_health_initial_timeout = max(1, int(round(peer_timeout)))
    ext._check_health_interval = HEALTH_INTERVAL_S
    ext._check_health_timeout = HEALTH_TIMEOUT_S
    ext._check_health_retry_limit = HEALTH_TRIES
