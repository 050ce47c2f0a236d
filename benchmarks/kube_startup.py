"""The local Kubernetes control plane's warm start: seconds until 2 fake nodes are Ready, and
the memory its five processes hold once idle; prints one JSON document.

    python -m benchmarks.kube_startup            # 5 rounds
    python -m benchmarks.kube_startup --rounds 2

The cold build's time and memory are measured by deploy/kube/build.sh itself (/usr/bin/time -v
output in build-stats.txt next to each cached binary) and summed here when present.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import tempfile
import time
from pathlib import Path

import psutil

from devstack.kube_cluster import KubeBinaries, kube_cache, start_control_plane


def _build_stats() -> dict[str, dict[str, float]]:
    stats: dict[str, dict[str, float]] = {}
    for path in sorted(kube_cache().glob("*/build-stats.txt")):
        text = path.read_text()
        wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
        rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
        if not wall or not rss:
            continue
        seconds = sum(float(part) * 60**i for i, part in enumerate(reversed(wall[1].split(":"))))
        stats[path.parent.name] = {"build_s": round(seconds, 1), "peak_rss_mb": int(rss[1]) // 1024}
    return stats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    binaries = KubeBinaries.find()
    starts: list[float] = []
    idle_rss: list[float] = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as workdir:
            began = time.monotonic()
            plane = start_control_plane(Path(workdir), binaries=binaries)
            starts.append(time.monotonic() - began)
            try:
                time.sleep(5)
                idle_rss.append(
                    sum(psutil.Process(p.process.pid).memory_info().rss for p in plane.processes)
                    / 2**20
                )
            finally:
                plane.stop()
    builds = _build_stats()
    print(
        json.dumps(
            {
                "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, "
                f"{psutil.virtual_memory().total // 2**30} GiB",
                "rounds": args.rounds,
                "warm_start_s_median": round(statistics.median(starts), 2),
                "warm_start_s_max": round(max(starts), 2),
                "idle_rss_mb_median": round(statistics.median(idle_rss)),
                "cold_build": builds,
                "cold_build_s_total": round(sum(b["build_s"] for b in builds.values()), 1),
                "cold_build_peak_rss_mb": max(
                    (b["peak_rss_mb"] for b in builds.values()), default=0
                ),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
