"""The CLI's arm64 pieces: ``edgecomp setup arm64``, ``export --check-on`` and the emulated bench table.

    edgecomp setup arm64                                    # once: sysroot, qemu 10, wheels (cached)
    edgecomp export model.ecz --variants fp32,int8 --check-on arm64-emulated -o out/
    edgecomp bench out/ --target arm64-emulated --reference model.ecz

A file passes on arm64 when its arm64 outputs meet the same parity thresholds
as the x86 gate, against the Keras model and against the x86 run of the same file.
"""

from __future__ import annotations

from pathlib import Path

from edgecomp.errors import EdgecompError


def add_setup_parser(sub) -> None:
    p = sub.add_parser("setup", help="one-time set-ups: 'arm64' builds the emulated arm64 target's cache")
    p.add_argument("what", choices=("arm64",), help="arm64: Debian arm64 sysroot, qemu-user 10, aarch64 wheels")
    p.add_argument("--force", action="store_true", help="rebuild even when the cache exists")


def cmd_setup(args) -> None:
    from runtime_bench import emulation

    env = emulation.setup(force=args.force)
    m = env.manifest
    print(f"arm64-emulated ready: {m['qemu']}; {m['probe']}; {m['disk_mb']} MB in {env.root} "
          f"(built in {m['setup_s']} s)")


def emulated_targets(names: str | None) -> list:
    """The emulated targets named in a comma-separated ``--check-on`` list (a one-line error otherwise)."""
    from runtime_bench.targets import get_target

    targets = [get_target(t) for t in (names or "").split(",") if t.strip()]
    wrong = [t.name for t in targets if t.kind != "emulated"]
    if wrong:
        raise EdgecompError(f"--check-on takes emulated targets, not {', '.join(wrong)}",
                            fix="use arm64-emulated or arm64-emulated-a55 (bench measures the others)")
    return targets


def thresholds_of(name: str) -> tuple[str | None, dict]:
    """``(variant, thresholds)`` of an exported file, read from its name (``m_int8.tflite`` -> int8's);
    a name without a variant gets fp32's."""
    from exporters.parity import default_thresholds
    from exporters.variants import variant_of_file

    variant = variant_of_file(name)
    if variant is None:
        return None, default_thresholds("fp32")
    return variant.name, default_thresholds(variant)


def judge(rec: dict, thresholds: dict) -> list[str]:
    """The failed figures of one arm64 record, one line each (the x86 gate's thresholds)."""
    from exporters.parity import judge_figures

    if rec["error"]:
        return [rec["error"]]
    fails = judge_figures(rec["vs_keras"] or {}, thresholds, "arm64 vs Keras")
    return fails + judge_figures(rec["vs_x86"] or {}, {k: v for k, v in thresholds.items()
                                                       if not k.startswith("accuracy")}, "arm64 vs x86")


def table(records: list[dict]) -> str:
    from edgecomp.report import text_table

    def cell(fig, key, fmt):
        return "-" if not fig or key not in fig else format(fig[key], fmt)

    rows = []
    for r in records:
        k = r.get("kernels") or {}
        kern = ("sparse NCHW (SpMM)" if k.get("sparse_path") else
                f"{len(k.get('xnnpack_ukernels', []))} XNNPACK ukernels" if k.get("xnnpack_ukernels") else
                f"{k.get('builtin_kernels')} builtin" if k.get("builtin_kernels") else k.get("note", "-")[:24])
        rows.append([r["name"], r["target"].split("(")[-1].rstrip(")"),
                     cell(r["vs_keras"], "top1_agreement", ".2%"), cell(r["vs_keras"], "max_abs_diff", ".1e"),
                     cell(r["vs_x86"], "top1_agreement", ".2%"), cell(r["vs_x86"], "max_abs_diff", ".1e"),
                     r.get("default_delegate") or "-", kern, "PASS" if not r.get("failures") else "FAIL"])
    return text_table(["file", "cpu", "top-1 vs Keras", "max diff vs Keras", "top-1 vs x86", "max diff vs x86",
                       "default delegate", "kernels", "arm64"], rows)


def check_artifacts(model, artifacts, x, y, targets, out: Path) -> list[dict]:
    """Run every written artifact on each emulated target; write ``out/check_on.json``; raise on a failure."""
    import numpy as np

    from edgecomp import io
    from runtime_bench import emulated

    if not targets or not artifacts:
        return []
    ref = np.asarray(model.predict(x, verbose=0), dtype=np.float32)
    records = []
    for target in targets:
        for a in artifacts:
            rec = emulated.check_file(a.path, x, ref, y=y, cpu=target.cpu_model)
            rec["variant"] = a.variant
            rec["thresholds"] = dict(a.parity.get("thresholds") or {})
            rec["failures"] = judge(rec, rec["thresholds"])
            records.append(rec)
    io.write_json(out / "check_on.json", {"records": records, "latency": emulated.LATENCY_NOTE})
    print("\n" + table(records))
    print(f"latency: {emulated.LATENCY_NOTE}\nwrote {out}/check_on.json")
    failed = [r for r in records if r["failures"]]
    for r in failed:
        print(f"arm64 FAIL {r['name']} ({r['target']}): " + "; ".join(r["failures"]))
    if failed:
        raise EdgecompError(f"{len(failed)} of {len(records)} file(s) missed parity on arm64 "
                            f"({', '.join(r['name'] for r in failed)}); first: {failed[0]['failures'][0]}",
                            fix=f"see {out}/check_on.json; the files were written (they pass on x86)")
    return records


def print_bench_checks(records: list[dict]) -> int:
    """The emulated rows of a bench run as a parity table; returns how many failed."""
    checks = []
    for r in records:
        rec = r.get("emulation")
        if rec is None:
            continue
        rec["variant"], rec["thresholds"] = thresholds_of(rec["name"])
        rec["failures"] = judge(rec, rec["thresholds"])
        checks.append(rec)
    if checks:
        from runtime_bench.emulated import LATENCY_NOTE
        print("\n" + table(checks) + f"\nlatency: {LATENCY_NOTE}")
        for rec in checks:
            if rec["failures"]:
                print(f"arm64 FAIL {rec['name']} ({rec['target']}): " + "; ".join(rec["failures"]))
    return sum(1 for c in checks if c["failures"])
