"""Training under tf.distribute: TF_CONFIG checks, MirroredStrategy on a split CPU, two workers on
loopback (identical state, chief-only writes, resume), the Keras workaround, and a lost peer."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgecomp import distribute
from edgecomp.distribute import Distribute, cluster_from_env, replica_slices
from edgecomp.errors import EdgecompError
from edgecomp.recipe import Recipe

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = [sys.executable, str(ROOT / "scripts" / "launch_workers.py")]
EDGECOMP = [sys.executable, "-m", "edgecomp.cli"]


def _tf_config(workers, index, kind="worker"):
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": kind, "index": index}})


def test_tf_config_is_checked_and_names_the_chief():
    two = ["127.0.0.1:2000", "127.0.0.1:2001"]
    c = cluster_from_env({"TF_CONFIG": _tf_config(two, 1)})
    assert (c.address, c.size, c.is_chief, c.peers()) == ("127.0.0.1:2001", 2, False, ["127.0.0.1:2000"])
    assert cluster_from_env({"TF_CONFIG": _tf_config(two, 0)}).is_chief
    with_chief = json.dumps({"cluster": {"chief": ["h:1"], "worker": two}, "task": {"type": "worker", "index": 0}})
    assert not cluster_from_env({"TF_CONFIG": with_chief}).is_chief      # a chief task outranks worker 0
    bad = {"": "not set", "[1": "not valid JSON", '{"task": {}}': "no 'cluster'",
           json.dumps({"cluster": {"ps": ["h:1"]}}): "task type 'ps'",
           json.dumps({"cluster": {"worker": ["nohost"]}, "task": {"type": "worker", "index": 0}}): "host:port",
           json.dumps({"cluster": {"worker": two}, "task": {"type": "chief", "index": 0}}): "names no task type",
           json.dumps({"cluster": {"worker": two}, "task": {"type": "worker", "index": True}}): "task index True"}
    for text, message in bad.items():
        with pytest.raises(EdgecompError, match=message.replace("(", r"\(")):
            cluster_from_env({"TF_CONFIG": text} if text else {})


def test_distribute_config_validates_and_rides_in_the_recipe():
    r = Recipe.from_options(distribute="mirrored", cpu_devices=2, check_masks=True)
    assert r.distribute == Distribute("mirrored", cpu_devices=2, check_masks=True)
    assert Recipe.from_config(r.get_config()) == r
    assert Recipe.from_config({k: v for k, v in r.get_config().items() if k != "distribute"}).distribute == Distribute()
    for bad, message in ((dict(strategy="ring"), "unknown distribution strategy"),
                         (dict(strategy="mirrored", cpu_devices=1), "cpu-devices must be 0"),
                         (dict(strategy="multi-worker", cpu_devices=2), "splits one host's CPU"),
                         (dict(strategy="multi-worker", peer_timeout=0), "peer-timeout must be")):
        with pytest.raises(EdgecompError, match=message):
            Distribute(**bad)


def test_a_global_batch_splits_over_replicas_without_loss():
    for n, r in ((64, 2), (7, 2), (33, 4)):
        parts = replica_slices(n, r)
        assert parts[0][0] == 0 and parts[-1][1] == n and all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
        assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1
    ses = distribute.Session(Distribute())
    ses.replicas = 2
    with pytest.raises(EdgecompError, match="global batch of 63 does not divide by the 2 replicas"):
        ses.check_batch(63)


def test_peer_errors_become_peer_lost_with_the_cause():
    import tensorflow as tf
    err = tf.errors.UnavailableError(None, None, "Graph execution error:\n\nrecvmsg:Connection reset by peer\n"
                                     "Additional GRPC error information from remote target /job:worker/replica:0/task:1")
    ses = distribute.Session(Distribute("multi-worker"))
    with pytest.raises(distribute.PeerLost, match="Connection reset by peer; peer /job:worker/replica:0/task:1") as e:
        with ses.training(object.__new__(_NoLayers), samples=1, batch_size=1, epochs=1, learning_rate=1e-3):
            raise err
    assert e.value.exit_code == 3 and "--resume" in str(e.value)
    with pytest.raises(ValueError):   # anything else passes through untouched
        with ses.training(object.__new__(_NoLayers), samples=1, batch_size=1, epochs=1, learning_rate=1e-3):
            raise ValueError("a bug")
    with pytest.raises(tf.errors.UnavailableError):   # and without peers there is no peer to blame
        with distribute.Session(Distribute()).training(object.__new__(_NoLayers), samples=1, batch_size=1,
                                                      epochs=1, learning_rate=1e-3):
            raise err


class _NoLayers:
    def _flatten_layers(self):
        return []


def _run(cmd, env=None, timeout=300):
    full = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, env=full, timeout=timeout, cwd=ROOT)


def test_mirrored_on_two_cpu_devices_matches_one_device():
    """Masked fine-tuning and the centroid gradient (summed per centroid, then over replicas)
    give one device's result; both replicas hold identical copies; no pruned weight moves."""
    r = _run([sys.executable, str(ROOT / "tests" / "dist_probe.py"), "mirrored"])
    line = next((l for l in r.stdout.splitlines() if l.startswith("RESULT ")), None)
    assert line, r.stdout[-2000:] + r.stderr[-3000:]
    out = json.loads(line[7:])
    assert out["replicas"] == 2 and out["replicas_equal"]
    # float sums in another order (and Adam's sign-like steps on near-zero gradients) leave small
    # differences; a replica that kept its own gradient would differ by the order of the update itself
    assert out["fit_max_diff"] < 1e-3 * out["fit_max_weight"]
    assert out["codebook_max_diff"] < 0.1 * out["codebook_moved"]
    assert out["mask_steps"] == 8 and out["pruned_nonzero"] == 0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from edgecomp.models import build_model
    path = tmp_path_factory.mktemp("dist") / "vgg.keras"
    build_model("vgg", (28, 28, 1), 10, width=0.125).save(path)
    return path


def _compress_args(model, out, *extra):
    return [*EDGECOMP, "compress", str(model), "--data", "fashion_mnist", "--train-size", "256", "--test-size", "128",
            "--batch-size", "32", *extra, "-o", str(out)]


def _lines(text, prefix):
    return sorted(l.split("] ", 1)[-1] for l in text.splitlines() if prefix in l)


def test_mirrored_cli_reports_replicas_and_refuses_an_odd_batch(tiny, tmp_path):
    r = _run(_compress_args(tiny, tmp_path / "m.ecz", "--distribute", "mirrored", "--cpu-devices", "2",
                            "--check-masks"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "mirrored on 2 replicas" in r.stdout and "0 pruned weights not 0 after 8 steps" in r.stdout
    r = _run(_compress_args(tiny, tmp_path / "odd.ecz", "--distribute", "mirrored", "--cpu-devices", "2",
                            "--batch-size", "33"))
    assert r.returncode == 2 and "global batch of 33 does not divide by the 2 replicas" in r.stderr
    assert not (tmp_path / "odd.ecz").exists()


def test_two_workers_on_loopback_train_every_stage_identically_and_resume(tiny, tmp_path):
    """Structured pruning, masked fine-tuning, centroids and QAT on 2 workers: the same weights and
    container on both, pruned weights 0 after every step, one writer; --resume reuses the stages."""
    out, ck = tmp_path / "mw.ecz", tmp_path / "ck"
    args = _compress_args(tiny, out, "--channels", "0.5", "--method", "deep", "--qat-epochs", "1",
                          "--distribute", "multi-worker", "--check-masks", "--checkpoints", str(ck))
    r = _run([*LAUNCH, "2", "--log-dir", str(tmp_path / "logs"), "--", *args])
    assert r.returncode == 0, r.stdout[-4000:]
    digests = {l.split(": ", 1)[1] for l in _lines(r.stdout, "digest on worker")}
    assert len(_lines(r.stdout, "digest on worker")) == 2 and len(digests) == 1, r.stdout[-3000:]
    assert len(_lines(r.stdout, "0 pruned weights not 0 after 16 steps")) == 2
    assert "multi-worker on 2 replicas (2 worker(s)); global batch 32 (16 per replica)" in r.stdout
    assert len(_lines(r.stdout, "] wrote ")) == 1 and out.is_file()       # the chief alone writes
    first = out.read_bytes()
    r = _run([*LAUNCH, "2", "--log-dir", str(tmp_path / "logs2"), "--", *args, "--resume"])
    assert r.returncode == 0, r.stdout[-4000:]
    assert {l.split(": ", 1)[1] for l in _lines(r.stdout, "digest on worker")} == digests
    assert out.read_bytes() == first
    assert "Epoch" not in r.stdout            # every stage came from the checkpoints


def test_keras_multi_worker_fit_fails_without_the_workaround(tiny, tmp_path):
    """keras-team/keras#20585 still bites Keras 3.15.1 + TF 2.21: without edgecomp.distribute_compat
    the two workers fail in model.fit; the same run passes with it (the test above)."""
    args = _compress_args(tiny, tmp_path / "x.ecz", "--distribute", "multi-worker")
    r = _run([*LAUNCH, "2", "--log-dir", str(tmp_path / "logs"), "--grace", "5", "--", *args],
             env={"EDGECOMP_NO_KERAS_MWMS_FIX": "1"})
    assert r.returncode != 0
    assert "PerReplica" in r.stdout or "Invalid reduction dimension" in r.stdout, r.stdout[-3000:]


def test_a_killed_worker_stops_the_other_with_a_resume_hint(tiny, tmp_path):
    """SIGKILL one worker mid-training: the other stops by itself (exit 3) well within 60 s, saying
    how to resume; --resume then finishes from the chief's checkpoints."""
    logs, ck, out = tmp_path / "logs", tmp_path / "ck", tmp_path / "k.ecz"
    args = [*EDGECOMP, "compress", str(tiny), "--data", "fashion_mnist", "--train-size", "4096", "--test-size", "128",
            "--method", "deep", "--centroid-epochs", "6", "--distribute", "multi-worker", "--checkpoints", str(ck),
            "-o", str(out)]
    proc = subprocess.Popen([*LAUNCH, "2", "--log-dir", str(logs), "--summary", str(tmp_path / "s.json"), "--", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:   # kill worker 1 once centroid training is under way
        text = (logs / "worker-1.log").read_text() if (logs / "worker-1.log").exists() else ""
        if "Centroid fine-tuning epoch 2/" in text:
            break
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before worker 1 could be killed"
    os.kill(int((logs / "worker-1.pid").read_text()), signal.SIGKILL)
    stdout, _ = proc.communicate(timeout=120)
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["exit_codes"][0] == 3 and summary["first_failure"] == 1, stdout[-3000:]
    assert not summary["stopped_by_launcher"] and summary["others_stopped_after_s"] < 60
    assert "a peer worker stopped or became unreachable" in stdout and "--resume" in stdout
    assert not out.exists()
    r = _run([*LAUNCH, "2", "--log-dir", str(tmp_path / "logs2"), "--", *args, "--resume"])
    assert r.returncode == 0 and out.is_file(), r.stdout[-3000:]
    assert "Centroid fine-tuning epoch" in r.stdout   # the centroid stage ran again ...
    assert "] Epoch " not in r.stdout            # ... but the masked fine-tuning came from the checkpoint
