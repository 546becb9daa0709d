"""The mesh the selection experiments run on: one selection service, one frontend, and
one container per model, each a separate process started as `python -m services.model_container`.

Containers (all serve `benchmarks.selection_models:WrappedModel`):
- the five models of `selection_models.MODELS`;
- `svm-all-pixels` (`selection_models.STRONG`), which degrades while a flag file exists;
- `knn-slow`: the kNN model sleeping 10x the straggler SLO per batch;
- `svm-user1`, `svm-user2`: the SVM with labels shifted by 1 and 2 (with `svm` itself
  as shift 0, one model per user convention).
"""

from __future__ import annotations

import re
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks import selection_models as models
from services.client import AsyncClient
from services.common import tensors
from testkit.mesh import Mesh

SLO_MS = 1000  # learning experiments: no deadline pressure
MAIN = tuple(spec.name for spec in models.MODELS)
DEGRADING = models.STRONG.name
STRAGGLER_SLO_MS = 50
SLOW = "knn-slow"
SLOW_DELAY_S = 10 * STRAGGLER_SLO_MS / 1000
USER_MODELS = {"svm": 0, "svm-user1": 1, "svm-user2": 2}  # name -> label shift
DEFAULT_OUTPUT = -1


class Lab:
    """The running mesh, the trained model files and the held-out samples."""

    def __init__(self, work: Path) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.work = work
        self.mesh = Mesh(work)
        self.flag = work / "svm-degraded.flag"
        self.paths: dict[str, Path] = {}
        self.x_pool = np.empty((0, 64), np.float32)
        self.y_pool = np.empty(0, np.int64)
        self._client: AsyncClient | None = None

    def start(self) -> None:
        self.paths = models.train(self.work / "models")
        _, _, self.x_pool, self.y_pool = models.split()
        self.mesh.start_selection()
        # A generous replica TTL: heartbeats from busy containers on a small machine may lag.
        # Metrics on: the report counts the frontend's selection fallbacks.
        self.mesh.start_frontend("--replica-ttl-s", "5", "--metrics-port", "0")
        envs = {name: models.model_env(path, degrade_flag=self.flag if name == DEGRADING
                                       else None)
                for name, path in self.paths.items()}
        envs[SLOW] = models.model_env(self.paths["knn"], delay_s=SLOW_DELAY_S)
        for name, shift in USER_MODELS.items():
            if shift:
                envs[name] = models.model_env(self.paths["svm"], shift=shift)
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda item: self.mesh.start_container(
                models.MODEL_REF, item[0], "1", env=item[1]), envs.items()))
        for name in envs:
            self.mesh.wait_connected(name, 1)

    @property
    def client(self) -> AsyncClient:
        assert self._client is not None, "open_client() first"
        return self._client

    def open_client(self) -> AsyncClient:
        self._client = AsyncClient(self.mesh.address, timeout_s=10.0)
        return self._client

    def create_app(self, name: str, linked: tuple[str, ...] | list[str], policy: str,
                   slo_ms: int = SLO_MS, params: dict[str, str] | None = None) -> None:
        """An application over float32[64] digits with default output -1 (int64)."""
        self.mesh.create_app(name, list(linked), shape=(64,), slo_ms=slo_ms, policy=policy,
                             params=params, default=tensors.encode(np.int64(DEFAULT_OUTPUT)))

    def pool_accuracy(self) -> dict[str, float]:
        """Each model's accuracy on all held-out samples, computed here."""
        return {name: float(np.mean(models.WrappedModel(path, 0, 0.0, "").predict_labels(
            self.x_pool) == self.y_pool)) for name, path in self.paths.items()}

    def selection_fallbacks(self) -> dict[str, int]:
        """Queries per application that the frontend served with a fallback decision
        (the selection service did not answer within its select timeout)."""
        logs = "".join(p.read_text() for p in self.work.glob("frontend*.log"))
        found = re.search(r"metrics at (http://\S+/metrics)", logs)
        if found is None:
            return {}
        with urllib.request.urlopen(found.group(1), timeout=5) as reply:
            text = reply.read().decode()
        counts: dict[str, int] = {}
        for match in re.finditer(r'^clipper_selection_fallbacks_total\{[^}]*application="([^"]*)"'
                                 r'[^}]*\} (\S+)$', text, re.MULTILINE):
            counts[match.group(1)] = int(float(match.group(2)))
        return counts

    def close(self) -> None:
        self.flag.unlink(missing_ok=True)
        self.mesh.close()
