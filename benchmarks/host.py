"""The machine a CPU benchmark ran on, as the benchmarks record it (bench_cpu.py, bench_bridge.py)."""

import os
import platform
import subprocess

LSCPU_KEYS = ("Model name", "CPU(s)", "Thread(s) per core", "L2 cache", "L3 cache")


def cpu_facts():
    """Platform, processor, CPU count, Python, and lscpu's model, CPUs, threads per core and caches
    (keys "lscpu <name>", left out where lscpu is missing)."""
    info = dict(platform=platform.platform(), processor=platform.processor(), cpu_count=os.cpu_count(),
                python=platform.python_version())
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return info
    for line in lscpu.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in LSCPU_KEYS:
            info["lscpu " + key.strip()] = value.strip()
    return info
