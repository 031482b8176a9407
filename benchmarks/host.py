"""What the CPU benchmarks share (bench_cpu.py, bench_bridge.py): the machine they ran on, as they
record it, and the child processes that run each side of a comparison in a process of its own."""

import json
import os
import platform
import subprocess
import tempfile

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


class Child:
    """A child process that a benchmark drives one line at a time: ``ask(line)`` writes a line to its
    stdin and returns its answer, the next line of its stdout, as JSON. Its stderr goes to a
    temporary file (a pipe nobody reads fills up and blocks the child), whose end is shown when the
    child exits unasked."""

    def __init__(self, cmd, env=None):
        self.cmd = [str(c) for c in cmd]
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, text=True)

    def read(self):
        """The child's next line of stdout; SystemExit, with the end of its stderr, if it exited."""
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self._stderr.seek(0)
            err = self._stderr.read().decode(errors="replace")
            raise SystemExit(f"{' '.join(self.cmd)} exited with {self.proc.returncode}:\n{err[-3000:]}")
        return line

    def read_json(self):
        return json.loads(self.read())

    def ask(self, line):
        self.proc.stdin.write(f"{line}\n")
        self.proc.stdin.flush()
        return self.read_json()

    def close(self, timeout=30):
        """End of input: the child finishes and exits (killed if it has not within ``timeout`` seconds)."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self._stderr):
            try:
                stream.close()
            except OSError:
                pass
