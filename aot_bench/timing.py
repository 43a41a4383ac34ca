"""Summary statistics and peak-memory probes (CUDA allocator or CPU resident set); stages are
timed by :class:`aot.video_path.StageClock` through the path's ``on_stage`` hook."""

from __future__ import annotations

import statistics
import threading
import time

import torch


def summarise(samples: list[float]) -> dict:
    """Median, min, max, relative spread ((max - min) / median) and the samples themselves."""
    if not samples:
        raise ValueError("no samples to summarise")
    median = statistics.median(samples)
    low, high = min(samples), max(samples)
    spread = (high - low) / median if median > 0 else 0.0
    return {"median": median, "min": low, "max": high, "spread": spread,
            "samples": list(samples)}


def _rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    import resource

    return pages * resource.getpagesize()


class PeakMemory:
    """Peak memory during a ``with`` block, in bytes.

    CUDA: ``torch.cuda.max_memory_allocated`` (weights included) and the rise over the memory
    allocated at entry. CPU: the resident set size sampled every ``interval`` seconds by a
    thread (weights included) and its rise over the entry value; coarser, and it includes
    allocator caching.
    """

    def __init__(self, device: torch.device, interval: float = 0.002):
        self.device = device
        self.interval = interval
        self.peak = 0
        self.baseline = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def kind(self) -> str:
        return "cuda_max_allocated" if self.device.type == "cuda" else "cpu_rss_sampled"

    @property
    def rise(self) -> int:
        return max(0, self.peak - self.baseline)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
        else:
            self.baseline = self.peak = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak = max(self.peak, _rss_bytes())
