"""bench_arm64's outputs: the JSON record, the Markdown tables (README block ``arm64``) and the PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _fig(f, key, fmt):
    return "-" if not f or key not in f else format(f[key], fmt)


def _verdict(fails) -> str:
    return "pass" if not fails else "FAIL"


def _kernels(rec) -> str:
    k = rec.get("kernels") or {}
    if (rec.get("default_delegate") or "").startswith("did not take"):
        # the trace holds the refused delegate's attempt too: say what ran the file
        return "builtin kernels (XNNPACK refused the file)"
    if k.get("sparse_path"):
        return "sparse NCHW: " + ", ".join(n.split("_ukernel_")[0].replace("xnn_f32_", "") for n in k["nchw_kernels"])
    if k.get("xnnpack_ukernels"):
        gemm = [n.replace("xnn_", "").split("_ukernel_")[0] + "_" + n.split("__")[-1]
                for n in k["xnnpack_ukernels"] if "gemm_" in n and "packw" not in n][:2]
        return "XNNPACK: " + (", ".join(f"`{g}`" for g in gemm) or f"{len(k['xnnpack_ukernels'])} ukernels")
    if k.get("builtin_kernels"):
        return "builtin kernels"
    return "n/a (ORT wheel has no symbols)" if k.get("note") else "-"


def markdown(meta: dict, records: list[dict], sparse: list[dict]) -> str:
    ok = [r for r in records if "vs_keras" in r]
    both = sum(1 for r in ok if not r["x86_failures"] and not r["failures"])
    same = sum(1 for r in ok if bool(r["x86_failures"]) == bool(r["failures"]))
    lines = ["# Every export on arm64 under emulation", "",
             f"Made by `{meta['command']}` in {meta['seconds']} s on {meta['machine']}; arm64: "
             f"{sparse[0].get('emulator', 'qemu') if sparse else 'qemu'}.", ""]
    s = meta.get("setup")
    if s:
        lines += [f"Set-up (`edgecomp setup arm64`, fresh cache): {s['first_s']} s, {s['disk_mb']} MB on disk "
                  f"(sysroot {s['steps']['sysroot_s']} s, qemu {s['steps']['qemu_s']} s, wheels "
                  f"{s['steps']['wheels_s']} s, smoke test {s['steps']['smoke_s']} s); run again: "
                  f"{s['again_s']} s (cache reused).", ""]
    lines += [f"{len(ok)} files: {both} pass on both x86 and arm64; x86 and arm64 give the same verdict on "
              f"{same} of {len(ok)}. Thresholds are the parity gate's, the same for both; arm64 is also "
              "compared with the x86 run of the same file. Latency is not reported: emulated time says "
              "nothing about a phone.", "",
              "| model | file | x86 top-1 | x86 max diff | x86 | arm64 top-1 | arm64 max diff | arm64 vs x86 max diff "
              "| default delegate | arm64 kernels | arm64 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if "vs_keras" not in r:
            lines.append(f"| {r['group']} | {r['name']} | - | - | - | - | - | - | - | - | {r['error'][:60]} |")
            continue
        arm = r["vs_keras"] if r["error"] is None else None
        lines.append(f"| {r['group']} | {r['name']} | {_fig(r['x86'], 'top1_agreement', '.2%')} | "
                     f"{_fig(r['x86'], 'max_abs_diff', '.1e')} | {_verdict(r['x86_failures'])} | "
                     f"{_fig(arm, 'top1_agreement', '.2%')} | {_fig(arm, 'max_abs_diff', '.1e')} | "
                     f"{_fig(r['vs_x86'], 'max_abs_diff', '.1e')} | {(r.get('default_delegate') or '-')[:40]} | "
                     f"{_kernels(r)} | {_verdict(r['failures'])} |")
    fails = [r for r in ok if r["failures"] or r["x86_failures"]]
    if fails:
        lines += ["", "Failures:"] + [f"- {r['name']}: x86: {'; '.join(r['x86_failures']) or 'pass'}; arm64: "
                                      f"{'; '.join(r['failures']) or 'pass'}" for r in fails]
    lines += ["", "Sparse MobileNet-style net (`mobilenet_sparse`, Fashion-MNIST padded to 32x32x3, 1x1 convs "
              f"pruned by `policy=\"xnnpack-sparse\"`: {', '.join(f'{k} {v:.0%}' for k, v in meta['sparsity'].items())}):",
              "", "| file | CPU | sparse path ran | NCHW kernels that ran | accuracy (Keras) | top-1 vs Keras | "
              "max diff vs Keras | max diff vs x86 | arm64 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in sparse:
        k = r.get("kernels") or {}
        lines.append(f"| {r['name']} | {r['target'].split('(')[-1].rstrip(')')} | {'yes' if k.get('sparse_path') else 'no'} | "
                     f"{', '.join(f'`{n}`' for n in k.get('nchw_kernels', [])) or '-'} | "
                     f"{_fig(r['vs_keras'], 'accuracy_keras', '.2%')} | {_fig(r['vs_keras'], 'top1_agreement', '.2%')} | {_fig(r['vs_keras'], 'max_abs_diff', '.1e')} | "
                     f"{_fig(r['vs_x86'], 'max_abs_diff', '.1e')} | {_verdict(r['failures'])} |")
    lines += ["", "Evidence: qemu logs the guest address of every block of code it translates "
              "(`-d trace:translate_block`); a block is translated when it first runs. The worker reports where "
              "LiteRT's library was loaded, and the library's symbol table names the function at each address "
              "(`runtime_bench.kernels`).", ""]
    return "\n".join(lines)


def png(records: list[dict]) -> bytes:
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in records if "vs_keras" in r and r["error"] is None and r["vs_keras"]]
    names = [f"{r['group'].replace('zoo:', '')}:{r['name'].split('_', 1)[-1]}" for r in ok]
    x86 = [max(r["x86"]["max_abs_diff"], 1e-9) for r in ok]
    arm = [max(r["vs_keras"]["max_abs_diff"], 1e-9) for r in ok]
    fig, ax = plt.subplots(figsize=(max(8, 0.35 * len(ok)), 4.5))
    pos = np.arange(len(ok))
    ax.bar(pos - 0.2, x86, 0.4, label="x86 vs Keras")
    ax.bar(pos + 0.2, arm, 0.4, label="arm64 (emulated) vs Keras")
    ax.set_yscale("log")
    ax.set_xticks(pos, names, rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("max abs diff of the outputs")
    ax.set_title("Every export: x86 and arm64 parity with the Keras model")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_outputs(out: Path, meta: dict, records: list[dict], sparse: list[dict]) -> None:
    from edgecomp import io

    out.mkdir(parents=True, exist_ok=True)
    io.write_json(out / "bench_arm64.json", {"meta": meta, "records": records, "sparse": sparse})
    text = markdown(meta, records, sparse)
    io.write_bytes(out / "bench_arm64.md", text.encode())
    io.write_bytes(out / "bench_arm64.png", png(records))
    print(text)
