"""The compression flags of ``edgecomp compress`` and ``edgecomp run``, and the recipe they build.

Every flag is one setting of :class:`edgecomp.recipe.Recipe`; :func:`recipe_from_args` parses
them once. Imports no TensorFlow (the CLI's start-up stays fast).
"""

from __future__ import annotations

import argparse

from edgecomp.train import LR_SCHEDULES


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"compress rate must be a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"compress rate must be in [0, 1), got {value}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def _add_compression(p, defaults: bool = True):
    """The compression flags; with ``defaults=False`` an absent flag is left out of the args, so the
    recipe it builds over (``edgecomp run``'s best recipe) keeps its own value."""
    groups = [p.add_argument_group("compression (each flag is one setting of the recipe: edgecomp.recipe)")]
    g = groups[0]
    g.add_argument("--method", choices=("seed", "deep"), default="seed",
                   help="seed: int8 values + uint8 relative index; deep: k-means weight sharing with trained "
                        "centroids + entropy-coded indices (default: seed)")
    g.add_argument("--compress-rate", "--rate", dest="rate", type=_rate, default=0.8,
                   help="fraction of weights to prune, in [0, 1) (default: 0.8)")
    g.add_argument("--criterion", default="filter",
                   help="magnitude criterion: per output filter (seed), per layer, global, or block[:RxC] "
                        "(whole 16x1 blocks, LiteRT's sparse int8 FULLY_CONNECTED) (default: filter)")
    g.add_argument("--layer-rates", default=None,
                   help="per-layer rates, e.g. fc1=0.95,block1_*=0.5 (a glob matches a layer name or weight path)")
    g.add_argument("--prune-schedule", default="oneshot",
                   help="oneshot, iterative[:STEPS] (fine-tune after each step) or gradual[:UPDATES] (default: oneshot)")
    g.add_argument("--fine-tune-epochs", type=_positive, default=1,
                   help="masked fine-tuning epochs (per step for iterative) (default: 1)")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant",
                   help="learning rate of each fine-tuning run: constant, or cosine decay to 0 (default: constant)")
    g.add_argument("--prune-first", action="store_true", help="prune the first conv/dense layer too")
    g.add_argument("--small-tensors", dest="small_tensors", default=None, choices=("fold", "raw", "fp16", "compact"),
                   help="how BatchNorm, biases and uncoded kernels are stored: fold (default: BN as scale/shift, "
                        "folded into an uncoded kernel; fp32 parity), raw (float32), fp16 or compact (smaller, "
                        "rounded: check parity)")
    g.add_argument("--pruning-policy", dest="policy", default=None, choices=("xnnpack-sparse",),
                   help="prune only what a runtime's fast path takes: xnnpack-sparse prunes only 1x1 convs "
                        "(>= 2/3 zeros each) and checks the model fits XNNPACK's sparse path on ARM")
    g.add_argument("--bits", default=None,
                   help="deep: centroid bits per layer kind or glob, e.g. conv=8,dense=5,fc1=3 (default: conv=8,dense=5)")
    g.add_argument("--init", choices=("linear", "density", "random"), default=None,
                   help="deep: k-means initialisation (default: linear)")
    g.add_argument("--centroid-epochs", type=_positive, default=None, help="deep: centroid fine-tuning epochs (default: 1)")
    g.add_argument("--index-bits", type=int, default=None, help="deep: bits per relative index gap (default: codec's)")
    g.add_argument("--coder", choices=("auto", "huffman", "deflate", "fixed"), default=None,
                   help="deep: entropy coder for indices and gaps; auto takes the smallest per tensor (default: auto)")
    g.add_argument("--batch-size", type=_positive, default=64, help="batch size of every training run (default: 64)")
    g.add_argument("--seed", type=int, default=0, help="seed of every stage (default: 0)")
    g = p.add_argument_group("structured pruning (whole channels removed first: a smaller, faster dense model)")
    groups.append(g)
    g.add_argument("--channels", default=None,
                   help="keep ratio of each channel group, in (0, 1], global and/or per layer by glob, e.g. 0.5 or "
                        "0.5,fc1=0.3")
    g.add_argument("--target-macs", type=float, default=None, help="keep the largest ratio within this fraction of the MACs")
    g.add_argument("--target-latency", type=float, default=None,
                   help="keep the largest ratio whose exported fp32 TFLite runs within MS ms (measured on --latency-profile)")
    g.add_argument("--latency-profile", default=None,
                   help="runtime_bench target profile the latency target is measured on (default: mobile-big)")
    g.add_argument("--importance", default=None, help="channel importance: l1, l2, bn_scale or taylor (default: l1)")
    g.add_argument("--channel-ranking", choices=("uniform", "global"), default=None,
                   help="uniform: every group keeps the ratio; global: ranked across groups (default: uniform)")
    g.add_argument("--round-to", type=_positive, default=None, help="kept channel counts are multiples of N (default: 1)")
    g.add_argument("--structured-steps", type=_positive, default=None,
                   help="prune channels in N steps, fine-tuning after each (default: 1)")
    g.add_argument("--structured-epochs", type=_positive, default=None,
                   help="fine-tuning epochs after each channel step (default: 1)")
    g.add_argument("--distill", nargs="?", const="4,0.7", default=None, metavar="T,W",
                   help="distil from the unpruned model while fine-tuning the channel-pruned one: temperature and "
                        "soft-loss weight (default when given bare: 4,0.7; off: no distillation)")
    g.add_argument("--bn-sparsity", default=None, metavar="STRENGTH[,EPOCHS]",
                   help="network slimming: before the first channel step, train EPOCHS (default 1) with an L1 penalty "
                        "of STRENGTH on every BatchNorm gamma (pair with --importance bn_scale)")
    g = p.add_argument_group("quantization-aware training (int8 simulated while fine-tuning: int8 files on trained "
                             "ranges, no calibration)")
    groups.append(g)
    g.add_argument("--qat-epochs", type=_positive, default=None,
                   help="QAT fine-tuning epochs after pruning/sharing; the int8 TFLite/ONNX exports then use its trained "
                        "ranges (default: 0, no QAT)")
    g.add_argument("--qat-learning-rate", type=float, default=None, help="QAT's Adam learning rate (default: 1e-4)")
    g.add_argument("--qat-weight-bits", type=int, default=None,
                   help="QAT weight grid bits, 2..8, stored as int8 (7: safe for ONNX Runtime's u8s8 kernels on x86 "
                        "without VNNI) (default: 8)")
    g.add_argument("--qat-distill", default=None, metavar="T,W",
                   help="QAT distils from the float model's own answers: temperature and soft-loss weight, or off "
                        "(labels only) (default: 4,0.7)")
    if not defaults:
        for group in groups:
            for action in group._group_actions:
                action.default = argparse.SUPPRESS


def add_distribute(p):
    """``edgecomp compress``'s flags for training under tf.distribute, and for resumable runs."""
    g = p.add_argument_group("distributed fine-tuning (every training stage under tf.distribute: edgecomp.distribute)")
    g.add_argument("--distribute", choices=("none", "mirrored", "multi-worker"), default=None,
                   help="mirrored: every GPU of this host (or --cpu-devices); multi-worker: the cluster in TF_CONFIG, "
                        "one process per worker running this same command (scripts/launch_workers.py on one host) "
                        "(default: none)")
    g.add_argument("--cpu-devices", type=_positive, default=None,
                   help="mirrored: split the CPU into N logical devices instead of using GPUs (for checking)")
    g.add_argument("--peer-timeout", type=float, default=None,
                   help="multi-worker: seconds to wait for every peer at start (default: 60)")
    g.add_argument("--check-masks", action="store_true", default=None,
                   help="count pruned weights that are not exactly 0 on any replica after every training step")
    g.add_argument("--checkpoints", default=None, metavar="DIR",
                   help="save each finished stage here (the chief only), so --resume can continue")
    g.add_argument("--resume", action="store_true", help="continue after the last finished stage in --checkpoints")


#: Compression flag (argparse dest) -> Recipe.from_options option.
_RECIPE_FLAGS = {"method": "method", "rate": "rate", "criterion": "criterion", "layer_rates": "layer_rates", "policy": "policy",
                 "small_tensors": "small_tensors",
                 "prune_schedule": "schedule", "fine_tune_epochs": "fine_tune_epochs", "lr_schedule": "lr_schedule",
                 "batch_size": "batch_size", "seed": "seed", "bits": "bits", "init": "init",
                 "centroid_epochs": "centroid_epochs", "index_bits": "index_bits", "coder": "coder",
                 "qat_epochs": "qat_epochs", "qat_learning_rate": "qat_learning_rate",
                 "qat_weight_bits": "qat_weight_bits", "qat_distill": "qat_distill",
                 # edgecomp compress's distribution flags (add_distribute)
                 "distribute": "distribute", "cpu_devices": "cpu_devices", "peer_timeout": "peer_timeout",
                 "check_masks": "check_masks"}
_STRUCTURED_FLAGS = {"channels": "channels", "target_macs": "target_macs", "target_latency": "target_latency",
                     "latency_profile": "latency_profile", "importance": "importance", "channel_ranking": "ranking",
                     "round_to": "round_to", "structured_steps": "structured_steps",
                     "structured_epochs": "structured_epochs", "distill": "distill", "bn_sparsity": "bn_sparsity"}


def recipe_from_args(args, base=None):
    """The recipe the compression flags describe, over ``base`` (default: the Recipe defaults,
    which are the flags' defaults); every flag is parsed here, once. A flag the parser left out
    (``edgecomp run`` suppresses the defaults) keeps ``base``'s value."""
    from edgecomp.errors import EdgecompError
    from edgecomp.recipe import Recipe

    given = lambda table: {opt: getattr(args, dest) for dest, opt in table.items()  # noqa: E731
                           if getattr(args, dest, None) is not None}
    options, structured = given(_RECIPE_FLAGS), given(_STRUCTURED_FLAGS)
    if getattr(args, "prune_first", False):
        options["skip_first"] = False
    if str(structured.get("channels", "")).lower() in ("off", "none"):
        del structured["channels"]
        if structured:
            raise EdgecompError("--channels none turns structured pruning off, but other structured flags were given",
                                fix="drop them, or pass a keep ratio")
        base = (base or Recipe()).replace(structured=None)
    targets = [k for k in ("channels", "target_macs", "target_latency") if k in structured]
    if structured and not targets and (base is None or base.structured is None):
        flag = "--" + next(d for d, o in _STRUCTURED_FLAGS.items() if o in structured).replace("_", "-")
        raise EdgecompError(f"{flag} sets structured pruning, which needs --channels, --target-macs or --target-latency",
                            fix=f"add one of them, or drop {flag}")
    return Recipe.from_options(base, **options, **structured)
