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

**MultiWorkerMirroredStrategy's coordination service** (TF 2.21; TF 2.13+ start one by default
and then skip the Python health check): by default it has no heartbeat or shutdown bound of ours.
:func:`configure_coordination` sets a 10 s heartbeat (a peer that stops answering, e.g. a frozen
or partitioned host, is declared lost) and bounds the shutdown barrier. Its cluster-register
timeout is set too but is not applied while the strategy's constructor waits for the peers, so
:func:`edgecomp.distribute.rendezvous` bounds that wait in Python first.
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
            def mean(v):   # a PerReplica (several local devices) has no shape: its local values do
                one = strategy.experimental_local_results(v)[0] if isinstance(v, tf.distribute.DistributedValues) else v
                return strategy.reduce("MEAN", v, axis=0 if one.shape.rank else None)
            return tree.map_structure(mean, values)
        return reduce_per_replica(values, strategy, reduction)

    trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    trainer.reduce_per_replica = _reduce_per_replica
    _PATCHED.append(True)
    return True


def configure_coordination(peer_timeout: float) -> None:
    """Bound TF's coordination service (TF 2.21's MultiWorkerMirroredStrategy starts one, with no
    limit on how long the leader waits for the others to register, and then skips the Python
    health check). Must run before the strategy is made; it reads ``TF_CONFIG`` as the strategy does."""
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.distribute.cluster_resolver import TFConfigClusterResolver
    from tensorflow.python.eager import context

    if context.context().coordination_service is not None:
        return
    spec = TFConfigClusterResolver().cluster_spec()
    jobs = [coordination_config_pb2.CoordinatedJob(name=j, num_tasks=spec.num_tasks(j))
            for j in ("chief", "worker") if j in spec.jobs]
    ms = int(peer_timeout * 1000)
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=multi_worker_util.coordination_leader(spec),
        cluster_register_timeout_in_ms=ms, heartbeat_timeout_in_ms=HEARTBEAT_TIMEOUT_S * 1000,
        shutdown_barrier_timeout_in_ms=ms, coordinated_jobs=jobs)


#: Seconds without a heartbeat before the coordination service calls a peer lost.
HEARTBEAT_TIMEOUT_S = 10
