"""Benchmarks: tfbird against librosa on the same files, in the same run, medians of repeats.

``python -m tfbird bench frontend --audio DIR`` times decode + resample + log-mel of whole
recordings. ``python -m tfbird bench ingest --data DIR`` times the parallel tf.data ingest of
a data set against a sequential librosa loop that does the same work (decode, resample,
5-s windows, log-mel per window). Each writes its section of ``BENCHMARKS.md`` with the
command that produced it; the machine is shared, so only ratios measured side by side count.

Example:
    >>> rows = bench_frontend(["call.flac"], repeats=3)
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import librosa
import numpy as np
import tensorflow as tf

from tfbird import catalog, config, ingest
from tfbird.frontend import build_frontend
from tfbird.waveform import load_waveform


def median_seconds(function, repeats: int) -> float:
    """Median wall time of ``function()`` over ``repeats`` runs (after one warm-up run)."""
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def librosa_log_mel(y: np.ndarray, cfg: config.Config) -> np.ndarray:
    """The reference front end, with tfbird's settings."""
    fe = cfg.frontend
    power = librosa.feature.melspectrogram(
        y=y, sr=cfg.audio.sample_rate_hz, n_fft=fe.n_fft, hop_length=fe.hop_length,
        n_mels=fe.n_mels, fmin=fe.fmin_hz, fmax=fe.fmax_hz, power=fe.power)
    return librosa.power_to_db(power, ref=1.0, amin=fe.amin, top_db=fe.top_db).T


def bench_frontend(paths: list[Path], cfg: config.Config, repeats: int = 3) -> dict:
    """Seconds to turn each whole recording into a log-mel: librosa vs tfbird."""
    sample_rate_hz = cfg.audio.sample_rate_hz
    frontend = build_frontend(cfg.audio, cfg.frontend)
    log_mel = tf.function(frontend, input_signature=[tf.TensorSpec([1, None], tf.float32)])
    audio_s = sum(len(load_waveform(p, sample_rate_hz)) for p in paths) / sample_rate_hz

    def with_librosa():
        for path in paths:
            librosa_log_mel(librosa.load(path, sr=sample_rate_hz, mono=True)[0], cfg)

    def with_tfbird():
        for path in paths:
            log_mel(load_waveform(path, sample_rate_hz)[None]).numpy()

    librosa_s = median_seconds(with_librosa, repeats)
    tfbird_s = median_seconds(with_tfbird, repeats)
    return {"files": len(paths), "audio_s": audio_s, "librosa_s": librosa_s,
            "tfbird_s": tfbird_s}


def bench_ingest(data: Path, cfg: config.Config, repeats: int = 3) -> dict:
    """Seconds to ingest a data set with tfbird vs a sequential librosa loop."""
    table, _ = catalog.read_catalog(data, cfg.data.layout, cfg.data.label_column)
    table = table[table["error"] == ""]  # Files the catalog refuses are not timed.
    sample_rate_hz, window = cfg.audio.sample_rate_hz, cfg.audio.window_samples

    def with_librosa():
        for path in table["path"]:
            y = librosa.load(path, sr=sample_rate_hz, mono=True)[0]
            y = np.pad(y, (0, -len(y) % window))
            for start in range(0, len(y), window):
                librosa_log_mel(y[start:start + window], cfg).astype(np.float16)

    def with_tfbird():
        with tempfile.TemporaryDirectory() as out_dir:
            ingest.ingest(cfg, data, out_dir, progress=False)

    def decode_only():  # The floor: soundfile decode + soxr resample, nothing else.
        return sum(len(load_waveform(path, sample_rate_hz)) for path in table["path"])

    audio_s = decode_only() / sample_rate_hz
    librosa_s = median_seconds(with_librosa, repeats)
    tfbird_s = median_seconds(with_tfbird, repeats)
    decode_only_s = median_seconds(decode_only, repeats)
    return {"files": len(table), "audio_s": audio_s, "librosa_s": librosa_s,
            "tfbird_s": tfbird_s, "decode_only_s": decode_only_s}


def format_section(title: str, result: dict, what: str, repeats: int) -> str:
    """A Markdown section with the command, the machine and the side-by-side table."""
    command = "python -m tfbird " + " ".join(sys.argv[1:])
    hours = result["audio_s"] / 3600
    rows = [("librosa", result["librosa_s"]), ("tfbird", result["tfbird_s"])]
    if "decode_only_s" in result:
        rows.append(("decode + resample only (soundfile + soxr, 1 thread)",
                     result["decode_only_s"]))
    table = "\n".join(
        f"| {name} | {seconds:.2f} | {result['audio_s'] / seconds:.0f}x |" for name, seconds in rows)
    return (f"## {title}\n\n"
            f"`{command}` on {datetime.date.today()}, {os.cpu_count()} CPU cores "
            f"({platform.machine()}), TensorFlow {tf.__version__}, librosa {librosa.__version__}.\n\n"
            f"{what} {result['files']} files, {hours:.2f} h of audio; median of {repeats} runs "
            f"after a warm-up.\n\n"
            f"| path | seconds | realtime factor |\n|---|---|---|\n{table}\n\n"
            f"**tfbird is {result['librosa_s'] / result['tfbird_s']:.2f}x librosa** "
            f"(ratio of the medians, measured side by side in one run).\n"
            + (f"\ntfbird runs at {result['decode_only_s'] / result['tfbird_s']:.2f}x the "
               f"decode-only rate.\n" if "decode_only_s" in result else ""))


def write_section(path: Path, title: str, section: str) -> None:
    """Replaces the ``## title`` section of ``path`` (or appends it)."""
    text = path.read_text() if path.is_file() else (
        "# Benchmarks\n\nFigures from `python -m tfbird bench ...` on this project's 2-core "
        "CPU machines. The machines are shared, so compare ratios measured in the same run, "
        "not absolute seconds across runs.\n")
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
