"""Stage checkpoints for long runs, so ``--resume`` continues after the last finished stage.

A stage's checkpoint is the model's exact float32 weights (an ``.ecz`` container with raw
tensors) plus optional named arrays (masks, codebooks) in an ``.npz`` (no pickle), written
atomically; ``state.json`` lists the finished stages and the settings they were made with.
Each stage starts from a fixed seed, so a resumed run computes what an uninterrupted one does.
On a multi-worker cluster only the chief writes (the others read the same folder on resume).

    >>> ck = Checkpoints("runs/x/checkpoints", settings={"rate": 0.8}, resume=True)
    >>> if ck.done("prune-1"): masks = ck.load("prune-1", model)
    ... else: masks = ...; ck.save("prune-1", model, masks)
"""

from __future__ import annotations

import io as _io
import json
import os
from pathlib import Path

import numpy as np

from edgecomp import codec, distribute, io, store
from edgecomp.errors import EdgecompError


class Checkpoints:
    def __init__(self, folder: str | os.PathLike, settings: dict, resume: bool = False):
        self.folder = io.ensure_dir(folder) if self.writer else Path(folder)
        self.state_path = self.folder / "state.json"
        settings = json.loads(json.dumps(settings))  # normalise tuples etc.
        state = None
        if resume and self.state_path.is_file():
            try:
                state = json.loads(self.state_path.read_text())
            except ValueError:
                raise EdgecompError(f"checkpoint state {self.state_path} is damaged",
                                    fix="start again without --resume, or into a new --out folder") from None
            if state.get("settings") != settings:
                raise EdgecompError("the checkpoints in this folder were made with other settings",
                                    fix="resume with the same flags, or use a new --out folder")
        if resume and state is None and not self.writer:
            raise EdgecompError(f"{distribute.worker_name()} finds no checkpoint state at {self.state_path}, "
                                "which the chief wrote", fix="give every worker the same (shared) --checkpoints folder")
        self.state = state or {"settings": settings, "stages": {}}
        if not resume:
            self._write()

    @property
    def writer(self) -> bool:
        """Whether this process writes (decided at each write: the strategy may come later)."""
        return distribute.is_chief()

    def _write(self):
        if self.writer:
            io.write_json(self.state_path, self.state)

    def done(self, stage: str) -> bool:
        return stage in self.state["stages"]

    def info(self, stage: str) -> dict:
        return self.state["stages"][stage]

    def mark(self, stage: str, info: dict | None = None):
        """Record a stage as finished (its files must already be written)."""
        self.state["stages"][stage] = info or {}
        self._write()

    def save(self, stage: str, model, arrays: dict[str, np.ndarray] | None = None, info: dict | None = None):
        if not self.writer:
            return self.mark(stage, info)
        io.write_bytes(self.folder / f"{stage}.ecz", codec.encode_weights(store.model_weights(model)))
        buf = _io.BytesIO()
        names = list((arrays or {}).keys())
        np.savez(buf, names=np.array(names, dtype=str), **{f"a{i}": np.asarray(arrays[n]) for i, n in enumerate(names)})
        io.write_bytes(self.folder / f"{stage}.npz", buf.getvalue())
        self.mark(stage, info)

    def load(self, stage: str, model) -> dict[str, np.ndarray]:
        """Set ``model``'s weights from the stage's checkpoint; return its named arrays."""
        _, weights = codec.decode_weights((self.folder / f"{stage}.ecz").read_bytes())
        by_path = {v.path: v for v in model.weights}
        for name, value in weights.items():
            by_path[name].assign(value)
        with np.load(self.folder / f"{stage}.npz", allow_pickle=False) as z:
            names = [str(n) for n in z["names"]]
            return {n: z[f"a{i}"] for i, n in enumerate(names)}

    def save_model(self, stage: str, model, info: dict | None = None):
        """Save a stage whose model has a new architecture (structured pruning): the architecture
        and exact float32 weights in one container."""
        if self.writer:
            io.write_bytes(self.folder / f"{stage}.model.ecz", store.encode_model(model))
        self.mark(stage, info)

    def load_model(self, stage: str):
        """The model a :meth:`save_model` stage saved."""
        return store.decode_model((self.folder / f"{stage}.model.ecz").read_bytes())
