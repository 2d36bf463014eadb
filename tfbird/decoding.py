"""Recordings -> blocks of windows for ingest, decoded here or in worker processes.

``recording_window_blocks`` decodes, resamples and cuts one recording block by block (numpy;
see ``tfbird.waveform``), and ``recording_elements`` turns that into the tf.data elements
``ingest.window_dataset`` reads through ``Dataset.from_generator``. Run in tf.data's threads,
that Python holds the GIL for every element and competes with the writer loop, so on 2
cores it uses far less than 2 cores. ``DecodePool`` runs it in worker processes instead:
a recording that fits in one block (``data.decode_block_s``, most of any data set) is decoded
whole by a worker and comes back as its list of elements; a longer one is streamed in the
tf.data thread as before, so memory stays bounded by one block per recording open. The
elements are the same either way, so the records are too.

This module imports neither TensorFlow nor librosa: a worker process starts in about a
second with numpy, soundfile and soxr.

Example:
    >>> with DecodePool(processes=2) as pool:
    ...     elements = list(pool.recording_elements(b"call.flac", cfg))
"""

from __future__ import annotations

import concurrent.futures
import itertools
import multiprocessing
import os
from collections.abc import Iterator

import numpy as np

from tfbird import config
from tfbird.waveform import (
    AudioDecodeError,
    CountedBlocks,
    count_samples,
    count_windows,
    decode_error_message,
    frames_in,
    open_sound,
    stream_cut_windows,
    stream_waveform,
)


def recording_window_blocks(path: str, cfg: config.Config) -> Iterator[tuple]:
    """One recording's windows, block by block (numpy; may raise ``AudioDecodeError``).

    The recording is streamed (``stream_waveform``, blocks of ``data.decode_block_s``) and
    cut by ``stream_cut_windows``, so only one block is held, however long it is. With
    ``first`` selection, decoding stops after the windows kept. With ``random`` selection the
    number of windows must be known first: a recording of several blocks is decoded once
    more without resampling to count its samples.

    Yields:
        ``(windows float32 [k, window_samples], start_s [k], index int64 [k], num_windows,
        audio_s)``: ``index`` numbers the windows in the recording, ``num_windows`` is their
        total (-1 unless ``random``), ``audio_s`` the seconds decoded for this block.
    """
    audio, data = cfg.audio, cfg.data
    decoded = stream_waveform(path, audio.sample_rate_hz, data.decode_block_s)
    num_windows = -1
    if data.window_selection == "random":
        first_blocks = list(itertools.islice(decoded, 2))
        num_samples = (len(first_blocks[0]) if len(first_blocks) == 1
                       else count_samples(path, audio.sample_rate_hz, data.decode_block_s))
        num_windows = count_windows(num_samples, audio)
        decoded = itertools.chain(first_blocks, decoded)
    limit = data.windows_per_recording if data.window_selection == "first" else None
    blocks = CountedBlocks(decoded)
    index, reported = 0, 0
    for windows, start_s in stream_cut_windows(blocks, audio):
        if limit is not None:
            windows, start_s = windows[:limit - index], start_s[:limit - index]
        yield (windows, start_s, np.arange(index, index + len(windows)), num_windows,
               np.float32((blocks.num_samples - reported) / audio.sample_rate_hz))
        index, reported = index + len(windows), blocks.num_samples
        if limit is not None and index >= limit:
            return


def recording_elements(path: bytes, cfg: config.Config) -> Iterator[tuple]:
    """``recording_window_blocks`` as tf.data elements that never raise: each block gets
    ``error`` (empty, or the failure message) and ``last`` (True on the recording's final
    element). A failure yields one more element: no windows, the error, ``last``."""
    previous = None
    try:
        for block in recording_window_blocks(path.decode("utf-8"), cfg):
            if previous is not None:
                yield (*previous, b"", False)
            previous = block
    except Exception as error:  # Reported per file by the caller, never dropped.
        if previous is not None:
            yield (*previous, b"", False)
        window = cfg.audio.window_samples
        yield (np.zeros([0, window], np.float32), np.zeros([0], np.float32),
               np.zeros([0], np.int64), -1, np.float32(0), decode_error_message(error).encode(),
               True)
        return
    if previous is None:  # Cannot happen for audio (>= 1 window); keep the stream well formed.
        previous = (np.zeros([0, cfg.audio.window_samples], np.float32),
                    np.zeros([0], np.float32), np.zeros([0], np.int64), -1, np.float32(0))
    yield (*previous, b"", True)


def fits_one_block(path: bytes, block_s: float) -> bool:
    """True unless ``path`` opens and its header says it is longer than ``block_s`` seconds
    (the test ``stream_waveform`` makes); a file that does not open fits (it fails at once)."""
    try:
        with open_sound(path.decode("utf-8")) as sound:
            return sound.frames <= frames_in(block_s, sound.samplerate)
    except AudioDecodeError:
        return True


def whole_recording_elements(path: bytes, cfg: config.Config) -> list[tuple] | None:
    """All ``recording_elements`` of a recording that fits one block (a worker's task), or
    ``None`` for a longer one, which the caller streams itself."""
    if not fits_one_block(path, cfg.data.decode_block_s):
        return None
    return list(recording_elements(path, cfg))


def available_cores() -> int:
    """CPU cores this process may run on (``taskset`` and cgroup affinity included)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_decode_processes() -> int:
    """Decode worker processes for ingest: one per available core, or 0 (decode in tf.data's
    threads) on 1 core, where processes only add the copying, and inside a daemonic process
    (a Dask or multiprocessing worker), which may not start processes of its own."""
    if multiprocessing.current_process().daemon:
        return 0
    cores = available_cores()
    return cores if cores > 1 else 0


class DecodePool:
    """Worker processes that decode recordings for ``recording_elements``.

    Args:
        processes: number of worker processes; 0 decodes in the calling thread.

    The workers are started with ``spawn`` (never ``fork``: the parent runs TensorFlow's
    threads). As with any ``multiprocessing`` use, a script that ingests must guard its
    entry point with ``if __name__ == "__main__":`` (``train.py`` does).
    """

    def __init__(self, processes: int):
        if processes < 0:
            raise ValueError(f"Need processes >= 0 (0: decode in this process). "
                             f"Received: processes={processes}")
        self.processes = processes
        self._executor = None

    def __enter__(self) -> DecodePool:
        if self.processes:
            self._executor = concurrent.futures.ProcessPoolExecutor(
                self.processes, mp_context=multiprocessing.get_context("spawn"))
        return self

    def __exit__(self, *exc_info) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def recording_elements(self, path: bytes, cfg: config.Config) -> Iterator[tuple]:
        """The elements of ``decoding.recording_elements(path, cfg)``, decoded by a worker
        when the recording fits one block (else streamed here)."""
        if self._executor is None:
            yield from recording_elements(path, cfg)
            return
        elements = self._executor.submit(whole_recording_elements, path, cfg).result()
        if elements is None:
            yield from recording_elements(path, cfg)
        else:
            yield from elements
