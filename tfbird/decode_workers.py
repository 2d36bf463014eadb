"""Decoding in worker processes: recordings -> window blocks, in file order, on every core.

soundfile's and soxr's Python wrappers hold the GIL for much of a decode, so threads of one
process decode on about one core: ingest took as long on 2 cores as on 1 (BENCHMARKS.md,
"Ingest"). ``ordered_elements`` runs ``waveform.recording_elements`` (decode, resample, cut
windows) in worker processes and yields every recording's elements in the order of
``paths``, so what is written from them does not depend on the number of processes. Worker
``k`` of ``n`` decodes recordings ``k, k + n, ...``, at most ``QUEUE_BLOCKS`` blocks ahead
of the reader, so memory stays bounded however long a recording is.

A worker is ``python -m tfbird.decode_workers``: a fresh interpreter with numpy, soundfile
and soxr (no TensorFlow, none of the caller's script, so scripts need no
``if __name__ == "__main__"`` guard). It reads its settings and recordings from stdin and
writes each element to stdout as a small pickled header followed by the windows' raw float32
bytes (no pickling of the audio); it ignores Ctrl-C, and the reader stops it. A worker that
dies (a decoder that crashes on a broken file) fails the recording it was decoding, with the
reason ``decoder crashed``, and a new worker takes over its remaining recordings: nothing is
lost.

Example:
    >>> for position, windows, start_s, index, num_windows, audio_s, error, last in (
    ...         ordered_elements(["a.flac", "b.mp3"], cfg, processes=2)):
    ...     ...
"""

from __future__ import annotations

import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from tfbird.config import Config
from tfbird.waveform import failure_element, recording_elements

QUEUE_BLOCKS = 4  # Blocks a worker decodes ahead of the reader (each <= data.decode_block_s).


def available_cores() -> int:
    """Cores this process may run on (``taskset`` and container limits included)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def resolve_processes(decode_workers: int) -> int:
    """``data.decode_workers`` as a number of worker processes: -1 is one per available
    core when there are at least two (on one core a worker only adds copying), 0 none."""
    if decode_workers == -1:
        cores = available_cores()
        return cores if cores >= 2 else 0
    return decode_workers


def ordered_elements(paths: list[str], cfg: Config, processes: int) -> Iterator[tuple]:
    """``(position, *element)`` for each element of ``recording_elements(paths[position])``,
    position by position; with ``processes == 0`` decoded here, one recording at a time."""
    if processes == 0:
        for position, path in enumerate(paths):
            for element in recording_elements(path, cfg):
                yield (position, *element)
        return
    workers = [DecodeWorker(paths, cfg, list(range(k, len(paths), processes)))
               for k in range(min(processes, len(paths)))]
    try:
        for position in range(len(paths)):
            yield from workers[position % len(workers)].elements_of(position)
    finally:
        for worker in workers:
            worker.stop()


class DecodeWorker:
    """One worker process, reading the elements of its recordings from its stdout.

    Args:
        paths: all recordings; the worker decodes ``paths[p]`` for each of ``positions``.
        cfg: audio and data settings (``recording_elements``).
        positions: this worker's recordings, in the order the reader asks for them.
    """

    def __init__(self, paths: list[str], cfg: Config, positions: list[int]):
        self.paths, self.cfg = paths, cfg
        self.start(positions)

    def start(self, positions: list[int]) -> None:
        self.positions = positions
        self.process = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env=worker_environment())
        pickle.dump((self.cfg, [(p, self.paths[p]) for p in positions]), self.process.stdin)
        self.process.stdin.close()

    def elements_of(self, position: int) -> Iterator[tuple]:
        """The elements of recording ``position`` (the next of this worker's), up to its
        ``last``; if the worker died, a failure element and a new worker for the rest."""
        while True:
            try:
                element = read_element(self.process.stdout)
            except (EOFError, pickle.UnpicklingError):  # The worker died.
                code = self.stop()
                yield (position, *failure_element(
                    f"decoder crashed: the process decoding {self.paths[position]} died "
                    f"(exit code {code})", self.cfg.audio.window_samples))
                rest = self.positions[self.positions.index(position) + 1:]
                if rest:
                    self.start(rest)
                return
            if element[0] != position:
                raise RuntimeError(f"Decode worker out of order: expected recording "
                                   f"{position}, received {element[0]}")
            yield element
            if element[-1]:
                return

    def stop(self) -> int:
        """Ends the process (it may be blocked writing); returns its exit code."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.stdout.close()
        return self.process.wait()


def worker_environment() -> dict:
    """The environment of a worker: this one, with this tfbird first on the import path."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


def write_element(out: BinaryIO, element: tuple) -> None:
    """One element: a pickled header (everything but the windows, plus their shape), then
    the windows' raw float32 bytes."""
    windows = np.ascontiguousarray(element[1], np.float32)
    pickle.dump((windows.shape, element[0], *element[2:]), out, protocol=pickle.HIGHEST_PROTOCOL)
    if windows.size:  # (memoryview cannot cast an empty array)
        out.write(memoryview(windows).cast("B"))


def read_element(stream: BinaryIO) -> tuple:
    """The element ``write_element`` wrote; EOFError when the stream ends first."""
    shape, position, *rest = pickle.load(stream)
    windows = np.empty(shape, np.float32)
    if not windows.size:
        return (position, windows, *rest)
    view, filled = memoryview(windows).cast("B"), 0
    while filled < view.nbytes:
        count = stream.readinto(view[filled:])
        if not count:
            raise EOFError("decode worker output ended inside a block")
        filled += count
    return (position, windows, *rest)


def main() -> None:
    """A worker: decodes the recordings given on stdin, writes their elements to stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # The reader stops the workers.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # Anything else printed goes to stderr, not into the elements.
    cfg, work = pickle.load(sys.stdin.buffer)
    elements: queue.Queue = queue.Queue(QUEUE_BLOCKS)
    sender = threading.Thread(target=send_elements, args=(elements, out), daemon=True)
    sender.start()
    for position, path in work:
        for element in recording_elements(path, cfg):
            elements.put((position, *element))
    elements.put(None)
    sender.join()


def send_elements(elements: queue.Queue, out: BinaryIO) -> None:
    """The worker's writer thread (writes release the GIL while the next block decodes).
    Exits the process when the reader is gone or on any error (the decoding thread would
    wait forever otherwise); the reader then reports the recording as failed."""
    try:
        while (element := elements.get()) is not None:
            write_element(out, element)
        out.flush()
    except BrokenPipeError:
        os._exit(1)
    except BaseException:
        traceback.print_exc()
        os._exit(1)


if __name__ == "__main__":
    main()
