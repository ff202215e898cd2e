"""Workers and cores (tip 4): each worker reports itself; the scrape sums the live ones."""

from __future__ import annotations

import os
import time

from collector._multiprocess import cpu_cores
from collector.metrics import CPU_CORES, WORKER_CPU, WORKERS


class ProcessSampler:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self._cpu = WORKER_CPU.labels(str(self.pid)) if WORKER_CPU._labelnames else WORKER_CPU
        self._last_wall = time.perf_counter()
        self._last_cpu = time.process_time()

    def start(self) -> None:
        WORKERS.set(1)
        CPU_CORES.set(cpu_cores())
        self._cpu.set(0)

    def sample(self) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        elapsed = wall - self._last_wall
        if elapsed > 0:
            self._cpu.set((cpu - self._last_cpu) / elapsed)
        self._last_wall, self._last_cpu = wall, cpu
