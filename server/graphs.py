"""Compiled engine graphs for the served models (model/inference/compiled.py), managed per app.

`GraphManager.start()` attaches every model's graphs that are already built for this model
version, torch and CPU. With `compile="background"` it builds the missing ones in a subprocess at
the lowest CPU priority (minutes; the server answers eagerly meanwhile) and attaches them as soon
as it finishes. A model whose graphs are missing, stale or fail to load stays eager: logged, shown
in GET /models (`engine`) and in the `plr_compiled_graphs{model}` gauge. Graphs are attached on
the compute thread, the only thread that runs them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from dataclasses import dataclass

from model.inference.compiled import CompiledUnavailable, load_graphs

from .batcher import ComputeWorker
from .metrics import Metrics
from .runtime import ModelRuntime
from .settings import Settings

log = logging.getLogger(__name__)
BUILD_MODULE = "model.inference.compiled"  # `python -m` this to build packages


@dataclass
class GraphStatus:
    mode: str  # compiled | eager | building
    detail: str


class GraphManager:
    def __init__(self, settings: Settings, runtimes: dict[str, ModelRuntime],
                 worker: ComputeWorker, metrics: Metrics):
        self.settings, self.runtimes, self.worker, self.metrics = settings, runtimes, worker, metrics
        self.status = {name: GraphStatus("eager", "compiled graphs off (PLR_COMPILE=off)")
                       for name in runtimes}
        self._build: asyncio.Task | None = None
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        if self.settings.compile == "off":
            self._publish()
            return
        missing = await self.worker.run(self._attach_present)
        if missing and self.settings.compile == "background":
            for name in missing:
                self.status[name] = GraphStatus("building", "building in the background; eager "
                                                "until then")
            self._build = asyncio.get_running_loop().create_task(self._build_missing(missing))
        self._publish()

    def _attach_present(self) -> list[str]:
        """Attach every present package (compute thread); the names still without graphs."""
        missing = []
        for name, rt in self.runtimes.items():
            if rt.engine.graphs is not None:
                continue
            if rt.engine.device.type != "cpu":
                self.status[name] = GraphStatus("eager", "compiled graphs are CPU packages")
                continue
            try:
                graphs = load_graphs(rt.checkpoint.model, rt.version, self.settings.compiled_dir)
            except CompiledUnavailable as exc:
                self.status[name] = GraphStatus("eager", str(exc))
                missing.append(name)
                continue
            rt.engine.attach_graphs(graphs)
            self.status[name] = GraphStatus("compiled", f"graphs from {graphs.path}")
            log.info("model %s: compiled graphs attached (%s)", name, graphs.path)
        return missing

    async def _build_missing(self, names: list[str]) -> None:
        out = self.settings.compiled_dir
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "build.log", "ab") as logfile:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", BUILD_MODULE,
                "--models-dir", str(self.settings.models_dir), "--out", str(out),
                stdout=logfile, stderr=logfile, preexec_fn=lambda: os.nice(19),
                env={**os.environ, "OMP_NUM_THREADS": "1"})
            code = await self._proc.wait()
        if code != 0:
            for name in names:
                self.status[name] = GraphStatus("eager", f"background build failed (exit {code}; "
                                                f"see {out / 'build.log'})")
            log.warning("compiled graph build failed (exit %s): eager engines", code)
            self.metrics.error("compile_failed")
        else:
            await self.worker.run(self._attach_present)
        self._publish()

    def _publish(self) -> None:
        for name, status in self.status.items():
            self.metrics.compiled.labels(name).set(1 if status.mode == "compiled" else 0)

    def describe(self, name: str) -> dict:
        status = self.status[name]
        return {"mode": status.mode, "detail": status.detail}

    async def stop(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()  # a half-built package is never renamed into place
            await self._proc.wait()
        if self._build is not None:
            self._build.cancel()
            await asyncio.gather(self._build, return_exceptions=True)
