"""An emulated arm64 machine: a Debian arm64 sysroot, aarch64 wheels and a static ``qemu-aarch64``.

The phone's CPU kernels (XNNPACK's NEON and sparse NCHW paths, LiteRT's builtin
ARM kernels, ONNX Runtime's aarch64 MLAS) run here, on x86, under user-mode
emulation. :func:`setup` builds the environment once and caches it under the
user's cache folder, keyed on every version in it (:data:`VERSIONS`); later calls
reuse it. :func:`run_python` runs the sysroot's Python on a script or module,
with this repository and the wheels on its path.

What it takes (each measured on Debian bookworm, Dec 2026):

- ``mmdebstrap`` (Debian package ``mmdebstrap``) extracts the arm64 sysroot
  (python3.11 and its libraries) from the Debian archive, and the amd64
  ``qemu-user`` package of Debian **trixie**: qemu 10's static ``qemu-aarch64``.
  bookworm's qemu-user 7.2 segfaults when the LiteRT interpreter is created.
- ``pip download`` fetches the manylinux aarch64 wheels of the pinned
  ai-edge-litert, numpy and onnxruntime from PyPI.

The CPU model is pinned (``-cpu cortex-a76``, or ``cortex-a55``): qemu's default
``max`` CPU has SVE/SME that phones may lack, and XNNPACK picks its kernels from
the CPU's features. Emulated time says nothing about a phone's: qemu translates
every instruction (about 600x slower than native here), so no latency is reported.

    >>> env = setup()                       # minutes once, then instant   # doctest: +SKIP
    >>> run_python(env, ["-c", "import platform; print(platform.machine())"]).stdout   # doctest: +SKIP
    'aarch64\\n'
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edgecomp.errors import EdgecompError

#: Everything the cached environment is made of; its hash names the cache folder.
VERSIONS = {
    "sysroot_suite": "bookworm",
    "python": "3.11",
    "sysroot_packages": ["python3.11-minimal", "libpython3.11-stdlib", "libc6", "zlib1g", "libexpat1",
                         "libffi8", "libssl3", "libstdc++6", "libgcc-s1"],
    "qemu_suite": "trixie",
    "qemu_package": "qemu-user",
    "qemu_min_major": 10,
    "wheels": ["ai-edge-litert==2.3.0", "numpy==2.4.6", "onnxruntime==1.32.0"],
}

#: The ``--cpu`` choices: an A76-class phone big core (default) and an A55-class little core.
CPU_MODELS = {"a76": "cortex-a76", "a55": "cortex-a55"}
DEFAULT_MIRROR = "http://deb.debian.org/debian"
_REPO = Path(__file__).resolve().parent.parent
_SITE = "opt/edgecomp-site"
#: Lines that name a download that failed; the set-up's detail line is the first of them.
_NETWORK_HINTS = ("could not resolve", "temporary failure", "failed to fetch", "connection refused",
                  "network is unreachable", "no route to host", "connection timed out", "unable to connect",
                  "max retries exceeded", "name or service not known", "could not connect",
                  "no matching distribution", "404  not found", "release file", "cannot initiate")
#: mmdebstrap's own summary when apt could not fetch its lists (the cause is on a line above it).
_OFFLINE_HINTS = (*_NETWORK_HINTS, "apt-get update")


def cache_root() -> Path:
    """``$EDGECOMP_CACHE``, else ``$XDG_CACHE_HOME/edgecomp``, else ``~/.cache/edgecomp``."""
    if os.environ.get("EDGECOMP_CACHE"):
        return Path(os.environ["EDGECOMP_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edgecomp"


def cache_key() -> str:
    return hashlib.sha256(json.dumps(VERSIONS, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Arm64Env:
    """A built environment: ``root`` holds ``qemu-aarch64``, ``sysroot/`` and ``manifest.json``."""

    root: Path

    @property
    def qemu(self) -> Path:
        return self.root / "qemu-aarch64"

    @property
    def sysroot(self) -> Path:
        return self.root / "sysroot"

    @property
    def python(self) -> Path:
        return self.sysroot / "usr/bin" / f"python{VERSIONS['python']}"

    @property
    def manifest(self) -> dict:
        return json.loads((self.root / "manifest.json").read_text())

    def ready(self) -> bool:
        return (self.root / "manifest.json").is_file() and self.qemu.is_file() and self.python.is_file()


def find(root: Path | None = None) -> Arm64Env | None:
    """The cached environment for :data:`VERSIONS`, or None when it was not built yet."""
    env = Arm64Env((root or cache_root()) / "arm64" / cache_key())
    return env if env.ready() else None


def _tool(name: str, fix: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise EdgecompError(f"the arm64 set-up needs '{name}', which is not on PATH", fix=fix)
    return path


def _run(cmd: list[str], what: str, timeout_s: float) -> str:
    """Run an outside tool (mmdebstrap, qemu); a failure becomes one line that says what was missing."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _fail(None, "", what, timeout_s)
    if done.returncode != 0:
        _fail(done.returncode, done.stderr + done.stdout, what, timeout_s)
    return done.stdout


def _pip(args: list[str], what: str, timeout_s: float) -> None:
    """``python -m pip ...`` through the one worker helper (:func:`edgecomp.subproc.run_module`)."""
    from edgecomp.subproc import run_module

    run = run_module("pip", args, timeout_s=timeout_s)
    if run.timed_out or run.returncode != 0:
        _fail(None if run.timed_out else run.returncode, run.stderr + run.stdout, what, timeout_s)


def _fail(returncode, output: str, what: str, timeout_s: float):
    if returncode is None:
        raise EdgecompError(f"{what} took longer than {timeout_s:g} s",
                            fix="check the network (the Debian archive and PyPI), then run "
                                "`edgecomp setup arm64` again")
    text = output.strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    detail = next((ln for ln in reversed(lines) if "error" in ln.lower() or ln.startswith("E:")),
                  lines[-1] if lines else f"exit code {returncode}")
    if any(h in text.lower() for h in _OFFLINE_HINTS):
        detail = next((ln for ln in lines if any(h in ln.lower() for h in _NETWORK_HINTS)), detail)
        raise EdgecompError(f"{what} failed: could not download (no network?): {detail[:200]}",
                            fix="connect this machine to the Debian archive (or set EDGECOMP_DEBIAN_MIRROR) "
                                "and PyPI, then run `edgecomp setup arm64` again")
    raise EdgecompError(f"{what} failed: {detail[:240]}", fix="run `edgecomp setup arm64 --force` to rebuild")


def _check_qemu(env: "Arm64Env") -> None:
    if not env.qemu.is_file() or not env.python.is_file():
        missing = "qemu-aarch64" if not env.qemu.is_file() else "the sysroot's python"
        raise EdgecompError(f"{missing} is missing from the arm64 environment {env.root}",
                            fix="run `edgecomp setup arm64 --force` to rebuild it")


def _extract_wheel(wheel: Path, dest: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        root = dest.resolve()
        for info in zf.infolist():
            target = (dest / info.filename).resolve()
            if not target.is_relative_to(root):
                raise EdgecompError(f"wheel {wheel.name} holds a path outside its folder: {info.filename}",
                                    fix="delete the download folder and run `edgecomp setup arm64` again")
        zf.extractall(dest)


def setup(force: bool = False, root: Path | None = None, progress=print, timeout_s: float = 900) -> Arm64Env:
    """Build (or reuse) the arm64 environment and return it.

    Args:
        force: rebuild even when a cached one exists.
        root: the cache folder (default :func:`cache_root`).
        progress: called with one line per step.
        timeout_s: the limit of each download step.

    Returns an :class:`Arm64Env` whose ``manifest`` records the versions, each
    step's seconds and the size on disk. Built in a temporary folder renamed into
    place, so an interrupted set-up leaves nothing half-made.

    Example:
        >>> env = setup(progress=lambda line: None)          # doctest: +SKIP
        >>> env.manifest["disk_mb"]                          # doctest: +SKIP
        236.1
    """
    env = Arm64Env((root or cache_root()) / "arm64" / cache_key())
    if env.ready() and not force:
        progress(f"arm64 environment: reusing {env.root}")
        return env
    mmdebstrap = _tool("mmdebstrap", "install it with `apt-get install mmdebstrap` (Debian/Ubuntu), "
                                     "then run `edgecomp setup arm64` again")
    mirror = os.environ.get("EDGECOMP_DEBIAN_MIRROR", DEFAULT_MIRROR)
    env.root.parent.mkdir(parents=True, exist_ok=True)
    tmp = env.root.parent / f".{env.root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    steps: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        progress(f"arm64 set-up 1/4: Debian {VERSIONS['sysroot_suite']} arm64 sysroot (mmdebstrap, {mirror})")
        _run([mmdebstrap, "--variant=extract", "--arch=arm64",
              "--include=" + ",".join(VERSIONS["sysroot_packages"]), VERSIONS["sysroot_suite"],
              str(tmp / "sysroot"), mirror], "making the arm64 sysroot", timeout_s)
        steps["sysroot_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        progress(f"arm64 set-up 2/4: static qemu-aarch64 from Debian {VERSIONS['qemu_suite']}'s "
                 f"{VERSIONS['qemu_package']}")
        _run([mmdebstrap, "--variant=extract", f"--include={VERSIONS['qemu_package']}",
              VERSIONS["qemu_suite"], str(tmp / "qemu-pkg"), mirror], "fetching qemu-user", timeout_s)
        if not (tmp / "qemu-pkg/usr/bin/qemu-aarch64").is_file():
            raise EdgecompError(f"Debian {VERSIONS['qemu_suite']}'s {VERSIONS['qemu_package']} has no "
                                "usr/bin/qemu-aarch64", fix="set the qemu package to one that ships it (qemu-user)")
        shutil.copy2(tmp / "qemu-pkg/usr/bin/qemu-aarch64", tmp / "qemu-aarch64")
        shutil.rmtree(tmp / "qemu-pkg")
        version = _run([str(tmp / "qemu-aarch64"), "--version"], "running qemu-aarch64", 60).split("\n")[0]
        major = int(version.split("version")[1].split(".")[0]) if "version" in version else 0
        if major < VERSIONS["qemu_min_major"]:
            raise EdgecompError(f"{version.strip()} is too old (LiteRT segfaults under qemu 7.2)",
                                fix=f"use qemu-user {VERSIONS['qemu_min_major']} or newer (Debian trixie)")
        steps["qemu_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        progress("arm64 set-up 3/4: aarch64 wheels: " + ", ".join(VERSIONS["wheels"]))
        wheels = tmp / "wheels"
        py = VERSIONS["python"]
        _pip(["download", "--quiet", "--disable-pip-version-check",
              "--only-binary=:all:", "--platform", "manylinux_2_27_aarch64", "--platform",
              "manylinux_2_28_aarch64", "--platform", "manylinux2014_aarch64", "--python-version", py,
              "--implementation", "cp", "-d", str(wheels), *VERSIONS["wheels"]],
             "downloading the aarch64 wheels", timeout_s)
        site = tmp / "sysroot" / _SITE
        site.mkdir(parents=True)
        for wheel in sorted(wheels.glob("*.whl")):
            _extract_wheel(wheel, site)
        shutil.rmtree(wheels)
        steps["wheels_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        progress("arm64 set-up 4/4: smoke test under emulation")
        probe = run_python(Arm64Env(tmp), ["-c", "import platform, numpy, onnxruntime; "
                                           "from ai_edge_litert import interpreter; "
                                           "print(platform.machine(), numpy.__version__, onnxruntime.__version__)"],
                           timeout_s=300)
        if probe.returncode != 0 or not probe.stdout.startswith("aarch64"):
            raise EdgecompError(f"the emulated Python does not start: {(probe.stderr or probe.stdout).strip()[-200:]}",
                                fix="run `edgecomp setup arm64 --force`")
        steps["smoke_s"] = time.perf_counter() - t0
        disk = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file() and not f.is_symlink())
        manifest = {"versions": VERSIONS, "qemu": version.strip(), "probe": probe.stdout.strip(),
                    "mirror": mirror, "steps": {k: round(v, 1) for k, v in steps.items()},
                    "setup_s": round(sum(steps.values()), 1), "disk_mb": round(disk / 2**20, 1)}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        shutil.rmtree(env.root, ignore_errors=True)
        os.replace(tmp, env.root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    progress(f"arm64 environment ready in {manifest['setup_s']} s, {manifest['disk_mb']} MB: {env.root}")
    return env


def ensure(progress=print) -> Arm64Env:
    """The cached environment, built first when missing (the automatic first use)."""
    env = find()
    if env is not None:
        return env
    progress("arm64-emulated: first use, building the environment (about a minute; "
             "`edgecomp setup arm64` does this ahead)")
    return setup(progress=progress)


def qemu_command(env: Arm64Env, cpu: str = "a76", trace: Path | None = None) -> list[str]:
    """The ``qemu-aarch64`` command line for the sysroot's Python (``trace``: log every translated block)."""
    if cpu not in CPU_MODELS:
        raise EdgecompError(f"unknown emulated CPU '{cpu}'", fix=f"use one of: {', '.join(CPU_MODELS)}")
    cmd = [str(env.qemu), "-L", str(env.sysroot), "-cpu", CPU_MODELS[cpu]]
    if trace is not None:
        cmd += ["-d", "trace:translate_block", "-D", str(trace)]
    return cmd + [str(env.python)]


def run_python(env: Arm64Env, args: list[str], cpu: str = "a76", trace: Path | None = None,
               timeout_s: float = 600) -> subprocess.CompletedProcess:
    """Run the emulated Python with ``args``; this repository and the wheels are on its path.

    A run past ``timeout_s`` comes back with return code 124 (and qemu is killed).
    """
    _check_qemu(env)
    path_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(_REPO), "/" + _SITE]),
                "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1", "TF_CPP_MIN_LOG_LEVEL": "0"}
    try:
        return subprocess.run(qemu_command(env, cpu, trace) + list(args), capture_output=True, text=True,
                              timeout=timeout_s, env=path_env, cwd=str(_REPO))
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return subprocess.CompletedProcess(exc.cmd, 124, stdout=out,
                                           stderr=f"emulated run timed out after {timeout_s:g} s")
