"""A sampling profiler for the simulated controller (``--profile DIR``).

cProfile sees one thread and doubles the cost of every call; the controller's work is spread
over the event loop and the threadpool. This samples every thread's stack every few
milliseconds (``sys._current_frames``), skips threads that are idle (waiting on a lock, a
queue or ``select``), and on ``SIGUSR1`` writes the hottest functions (self and inclusive
samples) since the previous dump to ``DIR/profile-N.txt``.

Run as the controller's entry point: ``python -c "from stratuslab.sim.sampler import main;
main(DIR)" serve ...``.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import CodeType, FrameType

#: a thread whose innermost frame is one of these is waiting, not working
IDLE = frozenset({"wait", "select", "poll", "accept", "sleep", "_wait_for_tstate_lock"})


_names: dict[CodeType, str] = {}


def _where(code: CodeType) -> str:
    found = _names.get(code)
    if found is None:
        name = code.co_filename
        for marker in ("site-packages/", "src/", "lib/python3"):
            if marker in name:
                name = name.split(marker, 1)[1]
                break
        found = _names[code] = f"{name}:{code.co_firstlineno} {code.co_name}"
    return found


class Sampler:
    def __init__(self, out: Path, interval: float = 0.005) -> None:
        self.out = out
        self.interval = interval
        self.self_counts: Counter[str] = Counter()
        self.incl_counts: Counter[str] = Counter()
        self.samples = 0
        self.dumps = 0
        self._dumps_asked = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def request_dump(self, *_: object) -> None:
        """The ``SIGUSR1`` handler. It runs in the main thread (the server's event loop),
        possibly while that thread is being sampled: it only asks, the sampler thread
        writes (a dump in the handler deadlocked when two signals came close together)."""
        self._dumps_asked += 1

    def run(self) -> None:
        me = threading.get_ident()
        while True:
            time.sleep(self.interval)
            while self._dumps_asked > self.dumps:
                self.dump()
            frames = sys._current_frames()
            with self._lock:
                for ident, frame in frames.items():
                    if ident != me:
                        try:
                            self._sample(frame)
                        except (AttributeError, TypeError):  # a thread being torn down
                            continue

    def _sample(self, frame: FrameType) -> None:
        if frame.f_code.co_name in IDLE:
            return
        stack: list[str] = []
        f: FrameType | None = frame
        while f is not None:
            stack.append(_where(f.f_code))
            f = f.f_back
        self.samples += 1
        self.self_counts[stack[0]] += 1
        for key in set(stack):
            self.incl_counts[key] += 1

    def dump(self) -> None:
        with self._lock:
            self.dumps += 1
            elapsed = time.monotonic() - self.started
            lines = [
                f"{self.samples} busy samples in {elapsed:.1f} s "
                f"(every {self.interval * 1e3:.0f} ms)",
                "",
                "self:",
            ]
            total = max(self.samples, 1)
            for key, n in self.self_counts.most_common(60):
                lines.append(f"  {100 * n / total:5.1f}%  {key}")
            lines += ["", "inclusive:"]
            for key, n in self.incl_counts.most_common(150):
                lines.append(f"  {100 * n / total:5.1f}%  {key}")
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / f"profile-{self.dumps}.txt").write_text("\n".join(lines) + "\n")
            self.self_counts.clear()
            self.incl_counts.clear()
            self.samples = 0
            self.started = time.monotonic()


def main(out: str) -> None:
    sampler = Sampler(Path(out))
    signal.signal(signal.SIGUSR1, sampler.request_dump)
    threading.Thread(target=sampler.run, daemon=True, name="sampler").start()
    from stratuslab.api.server import main as serve

    serve()
