"""Benchmarks: tfbird against librosa on the same files, in the same run, medians of repeats.

``python -m tfbird bench frontend --audio DIR`` times decode + resample + log-mel of whole
recordings. ``python -m tfbird bench ingest --data DIR... --repeat N`` links every recording
of the folders N times (hours of real audio, no copies) and times whole processes from the
shell: ``tfbird ingest``, a librosa loop doing the same work (decode, resample, 5-s windows,
log-mel per window) in one process, and the decode + resample floor in 1 and 2 processes, on
2 cores and on 1 (``taskset``). ``python -m tfbird bench analyze --data FILES --model
RUN EXPORT`` times ``tfbird analyze`` with each model form and with 1 and 2 workers (``--jobs``,
``--dask-local``); ``bench analyze --plots`` draws wall-clock, speedup and efficiency against
workers from the saved results. ``python -m tfbird bench training --records DIR`` measures
the training reader alone (examples/s), training examples/s of the ``gap`` and ``sed`` heads
with float32, mixed precision and XLA, and the share of step time spent waiting for input in
a profiler trace. Each writes its section of ``BENCHMARKS.md`` with the command that
produced it; the machine is shared, so only ratios measured side by side count.

Example:
    >>> rows = bench_frontend(["call.flac"], repeats=3)
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import keras
import librosa
import numpy as np
import pandas as pd
import tensorflow as tf

from tfbird import catalog, config, dataset, records, training
from tfbird import model as model_lib
from tfbird.frontend import build_frontend
from tfbird.waveform import load_waveform, open_sound, read_mono, resample, stream_cut_windows


def median_seconds(function, repeats: int, warm_up=None) -> float:
    """Median wall time of ``function()`` over ``repeats`` runs, after one untimed
    ``warm_up()`` (by default a run of ``function`` itself)."""
    (warm_up or function)()
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


INGEST_TITLE = "Ingest: hours of real audio to log-mel records"
LIBROSA_INGEST = """
import sys
import librosa, numpy as np
sr, window, n_fft, hop, n_mels, fmin, fmax, power, amin, top_db = {settings}
for path in open(sys.argv[1]).read().splitlines():
    y = librosa.load(path, sr=sr, mono=True)[0]
    y = np.pad(y, (0, -len(y) % window))
    for start in range(0, len(y), window):
        mel = librosa.feature.melspectrogram(y=y[start:start + window], sr=sr, n_fft=n_fft,
            hop_length=hop, n_mels=n_mels, fmin=fmin, fmax=fmax, power=power)
        librosa.power_to_db(mel, ref=1.0, amin=amin, top_db=top_db).astype(np.float16)
"""
DECODE_FLOOR = """
import sys
from concurrent.futures import ProcessPoolExecutor
import soundfile, soxr
paths = open(sys.argv[1]).read().splitlines()
def decode(path):
    audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    return len(mono if rate == {sample_rate_hz} else
               soxr.resample(mono, rate, {sample_rate_hz}, quality="HQ"))
with ProcessPoolExecutor(int(sys.argv[2])) as pool:
    print(sum(pool.map(decode, paths, chunksize=8)))
"""


def link_corpus(sources: list[Path], out_dir: Path, repeat: int = 1) -> list[Path]:
    """A folder-per-class corpus of ``repeat`` symbolic links to every audio file of
    ``sources`` (never copies): ``out_dir/<class>/<k>-<path>``, the class being a file's first
    folder under its source (or the source's name). Returns the links, sorted."""
    links = []
    for copy in range(repeat):
        for source in sources:
            for path in catalog.audio_files_under(source):
                parts = path.relative_to(source).parts
                label = parts[0] if len(parts) > 1 else Path(source).name
                link = out_dir / label / f"{copy:03d}-{'__'.join(parts)}"
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(path.resolve())
                links.append(link)
    return sorted(links)


def wall_seconds(argv: list[str], cores: str | None = None) -> float:
    """Wall time of a whole process (``taskset -c cores`` when given); raises on failure."""
    import subprocess

    argv = (["taskset", "-c", cores] if cores else []) + argv
    started = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv[:6])} ... failed: {done.stderr[-2000:]}")
    return time.perf_counter() - started


def ingest_commands(corpus: Path, file_list: Path, out_dir: Path, cfg_path: Path,
                    cfg: config.Config) -> dict[str, list[str]]:
    """The processes ``bench_ingest`` times: ``tfbird ingest`` (also decoding in its own
    process, ``data.decode_workers=0``, and with ``--dask-local 2`` where Dask is installed),
    the librosa loop (one process) and the decode + resample floor (``soundfile`` + ``soxr``,
    1 or 2 processes)."""
    audio, fe = cfg.audio, cfg.frontend
    settings = (audio.sample_rate_hz, audio.window_samples, fe.n_fft, fe.hop_length,
                fe.n_mels, fe.fmin_hz, fe.fmax_hz, fe.power, fe.amin, fe.top_db)
    floor = DECODE_FLOOR.format(sample_rate_hz=audio.sample_rate_hz)
    tfbird = [sys.executable, "-m", "tfbird", "ingest", "--quiet", "--config", str(cfg_path),
              "--data", str(corpus), "--out", str(out_dir)]
    commands = {
        "tfbird": tfbird,
        "tfbird_in_process": [*tfbird, "--set", "data.decode_workers=0"],
        "librosa": [sys.executable, "-c", LIBROSA_INGEST.format(settings=settings),
                    str(file_list)],
        "floor_1": [sys.executable, "-c", floor, str(file_list), "1"],
        "floor_2": [sys.executable, "-c", floor, str(file_list), "2"],
    }
    if importlib.util.find_spec("distributed") is not None:
        commands["dask_local_2"] = [*tfbird, "--dask-local", "2"]
    return commands


def bench_ingest(sources: list[Path], cfg: config.Config, repeats: int = 3,
                 repeat_files: int = 1, one_core: bool = True) -> dict:
    """Wall seconds of whole processes on a corpus of ``repeat_files`` links to each file of
    ``sources``: ``tfbird ingest`` (2 cores, and 1 core with ``taskset``), the librosa loop in
    one process (the same on 1 core), and the decode + resample floor in 1 and 2 processes.
    The paths run one after the other within each repeat, so they share the machine's
    state; each ``tfbird ingest`` writes a fresh records folder, deleted once timed. Then
    ``stages`` breaks the work down on one copy of the files (``ingest_stage_seconds``)."""
    from tfbird import analyze

    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, layout="folders"))
    with tempfile.TemporaryDirectory(prefix="tfbird-bench-ingest-") as work:
        work = Path(work)
        links = link_corpus(sources, work / "corpus", repeat_files)
        file_list = work / "files.txt"
        file_list.write_text("\n".join(str(link) for link in links))
        config.save(cfg, work / "config.yaml")
        audio_s = sum(analyze.recording_duration_s(link) for link in links)
        seconds: dict[str, list[float]] = {}
        for repeat in range(repeats):
            commands = ingest_commands(work / "corpus", file_list, work / "records",
                                       work / "config.yaml", cfg)
            runs = [(name, argv, None) for name, argv in commands.items()]
            if one_core:
                runs += [("tfbird_1core", commands["tfbird"], "0"),
                         ("librosa_1core", commands["librosa"], "0")]
            for name, argv, cores in runs:
                seconds.setdefault(name, []).append(wall_seconds(argv, cores))
                shutil.rmtree(work / "records", ignore_errors=True)
                print(f"bench ingest: repeat {repeat + 1}/{repeats} {name} "
                      f"{seconds[name][-1]:.1f} s", file=sys.stderr, flush=True)
        stages = ingest_stage_seconds(sources, cfg)
    return {"files": len(links), "audio_s": audio_s, "repeats": repeats,
            "seconds": {name: statistics.median(values) for name, values in seconds.items()},
            "all_seconds": seconds, "stages": stages}


INGEST_STAGES = [
    ("startup", "process start-up (`import tfbird.ingest`, TensorFlow included), a fresh process"),
    ("decode", "decode + downmix (soundfile, `read_mono`)"),
    ("resample", "resample to the model rate (soxr HQ)"),
    ("framing", "cut windows (`stream_cut_windows`)"),
    ("logmel", "log-mel (`LogMelSpectrogram`, one call per recording's windows)"),
    ("serialise", "`records.to_example` per window"),
    ("write", "`TFRecordWriter.write`"),
]


def ingest_stage_seconds(sources: list[Path], cfg: config.Config) -> dict:
    """Seconds of each stage of ingest over the audio files of ``sources`` (once each), one
    stage and one file after the other in this process (no overlap, no threads), so they add
    up to the work one core does.

    ``in_process`` is ``ingest.ingest`` of the same files in this process (warm), for the
    pipeline's own cost (tf.data, per-file bookkeeping) beyond the sum of the stages.
    """
    from tfbird import ingest

    startup = wall_seconds([sys.executable, "-c", "import tfbird.ingest"])
    frontend = build_frontend(cfg.audio, cfg.frontend)
    log_mel = tf.function(lambda x: tf.cast(frontend(x), tf.float16), input_signature=[
        tf.TensorSpec([None, cfg.audio.window_samples], tf.float32)])
    log_mel(np.zeros([1, cfg.audio.window_samples], np.float32))
    seconds = {name: 0.0 for name, _ in INGEST_STAGES} | {"startup": startup}
    audio_s = 0.0
    with tempfile.TemporaryDirectory(prefix="tfbird-bench-stages-") as work:
        corpus = Path(work) / "corpus"
        paths = link_corpus(sources, corpus)
        writer = tf.io.TFRecordWriter(str(Path(work) / "stages.tfrecord"))
        for path in paths:
            started = time.perf_counter()
            with open_sound(path) as sound:
                mono, rate = read_mono(sound), sound.samplerate
            seconds["decode"] += time.perf_counter() - started
            started = time.perf_counter()
            waveform = resample(mono, rate, cfg.audio.sample_rate_hz)
            seconds["resample"] += time.perf_counter() - started
            audio_s += len(waveform) / cfg.audio.sample_rate_hz
            started = time.perf_counter()
            windows = np.concatenate([w for w, _ in stream_cut_windows([waveform], cfg.audio)])
            seconds["framing"] += time.perf_counter() - started
            started = time.perf_counter()
            features = log_mel(windows).numpy()
            seconds["logmel"] += time.perf_counter() - started
            started = time.perf_counter()
            labels = np.zeros(2, np.float32)
            examples = [records.to_example(f, labels, path.name, 0.0) for f in features]
            seconds["serialise"] += time.perf_counter() - started
            started = time.perf_counter()
            for example in examples:
                writer.write(example)
            seconds["write"] += time.perf_counter() - started
        writer.close()
        started = time.perf_counter()
        ingest.ingest(dataclasses.replace(cfg, data=dataclasses.replace(
            cfg.data, layout="folders", max_failures=len(paths))), corpus,
            Path(work) / "records", progress=False)
        in_process = time.perf_counter() - started
    return {"files": len(paths), "audio_s": audio_s, "seconds": seconds,
            "in_process": in_process}


def format_stage_table(stages: dict) -> str:
    """The breakdown of ``ingest_stage_seconds`` as a Markdown table with shares."""
    seconds = stages["seconds"]
    work = sum(v for k, v in seconds.items() if k != "startup")
    rows = "\n".join(f"| {label} | {seconds[name]:.2f} | "
                     f"{'' if name == 'startup' else f'{seconds[name] / work:.0%}'} |"
                     for name, label in INGEST_STAGES)
    return (f"Stages, one after the other in one process, over {stages['files']} distinct files "
            f"({stages['audio_s'] / 3600:.2f} h):\n\n| stage | seconds | share of the work |\n"
            f"|---|---|---|\n{rows}\n| sum of the work stages | {work:.2f} | 100% |\n"
            f"| `ingest.ingest` of the same files in-process (warm) | {stages['in_process']:.2f} "
            f"| |\n")


INGEST_ROWS = [
    ("tfbird", "`tfbird ingest`, 2 cores (a decode worker process per core)"),
    ("tfbird_in_process", "`tfbird ingest --set data.decode_workers=0` (decoding in its own "
                          "process), 2 cores"),
    ("librosa", "librosa loop, one process"),
    ("floor_1", "decode + resample floor (soundfile + soxr), 1 process"),
    ("floor_2", "decode + resample floor, 2 processes"),
    ("tfbird_1core", "`tfbird ingest` on 1 core (`taskset -c 0`)"),
    ("librosa_1core", "librosa loop on 1 core"),
    ("dask_local_2", "`tfbird ingest --dask-local 2` (2 Dask workers), 2 cores"),
]


def format_ingest_section(title: str, result: dict, command: str) -> str:
    """The ingest section: whole-process wall times, realtime factors and the ratios the
    issue tracks (tfbird / librosa, tfbird / the 2-core floor)."""
    seconds, audio_s = result["seconds"], result["audio_s"]
    table = "\n".join(
        f"| {label} | {seconds[name]:.1f} | {audio_s / seconds[name]:.0f}x |"
        for name, label in INGEST_ROWS if name in seconds)
    lines = [f"**tfbird is {seconds['librosa'] / seconds['tfbird']:.2f}x librosa** (one "
             f"process) and runs at {seconds['floor_2'] / seconds['tfbird']:.0%} of the 2-core "
             f"decode + resample rate."]
    if "tfbird_in_process" in seconds:
        lines.append(f"The decode workers make ingest "
                     f"{seconds['tfbird_in_process'] / seconds['tfbird']:.2f}x as fast as "
                     f"decoding in its own process.")
    if "tfbird_1core" in seconds:
        lines.append(f"On 1 core: {seconds['librosa_1core'] / seconds['tfbird_1core']:.2f}x "
                     f"librosa.")
    if "dask_local_2" in seconds:
        lines.append(f"With `--dask-local 2`: {seconds['librosa'] / seconds['dask_local_2']:.2f}x "
                     f"librosa, {seconds['tfbird'] / seconds['dask_local_2']:.2f}x the "
                     f"single-process ingest.")
    return (f"## {title}\n\n"
            f"`{command}` on {datetime.date.today()}, {os.cpu_count()} CPU cores "
            f"({platform.machine()}), TensorFlow {tf.__version__}, librosa {librosa.__version__}."
            f"\n\nWhole processes from the shell (start-up included), {result['files']} files "
            f"(symbolic links to the real recordings, repeated), {audio_s / 3600:.1f} h of audio; "
            f"median of {result['repeats']} runs, the paths run one after the other in each.\n\n"
            f"| path | seconds | realtime factor |\n|---|---|---|\n{table}\n\n"
            + "\n".join(lines) + "\n"
            + (f"\n{format_stage_table(result['stages'])}" if "stages" in result else ""))


def format_section(title: str, result: dict, what: str, repeats: int) -> str:
    """A Markdown section with the command, the machine and the side-by-side table."""
    command = "python -m tfbird " + " ".join(sys.argv[1:])
    hours = result["audio_s"] / 3600
    rows = [("librosa", result["librosa_s"]), ("tfbird", result["tfbird_s"])]
    table = "\n".join(
        f"| {name} | {seconds:.2f} | {result['audio_s'] / seconds:.0f}x |" for name, seconds in rows)
    return (f"## {title}\n\n"
            f"`{command}` on {datetime.date.today()}, {os.cpu_count()} CPU cores "
            f"({platform.machine()}), TensorFlow {tf.__version__}, librosa {librosa.__version__}.\n\n"
            f"{what} {result['files']} files, {hours:.2f} h of audio; median of {repeats} runs "
            f"after a warm-up.\n\n"
            f"| path | seconds | realtime factor |\n|---|---|---|\n{table}\n\n"
            f"**tfbird is {result['librosa_s'] / result['tfbird_s']:.2f}x librosa** "
            f"(ratio of the medians, measured side by side in one run).\n")


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


# --- Cross-validation: accuracy on real labelled clips beside the baseline -----------------

CV_TITLE = "Cross-validation: accuracy on real labelled clips"


def cv_title(backbone: str = "resnet50") -> str:
    """The ``bench cv`` section of a backbone: one section each in BENCHMARKS.md."""
    from tfbird.config import EMBEDDING_BACKBONES

    if backbone == "resnet50":
        return CV_TITLE
    if backbone in EMBEDDING_BACKBONES:
        return f"{CV_TITLE}, a head on {backbone} embeddings"
    return f"{CV_TITLE}, {backbone} from log-mels"


def format_cv_section(summary: dict, command: str, backbone: str = "resnet50") -> str:
    """The ``cv`` table (``cv.md`` without the confusion matrices) under the command."""
    from tfbird import cv

    table = (Path(summary["cv_dir"]) / cv.CV_MARKDOWN).read_text().split("\n\nConfusion")[0]
    return (f"## {cv_title(backbone)}\n\nCommand: `{command}` (one model per held-out fold, scored "
            f"through the exported SavedModel as `analyze` scores recordings; minutes are "
            f"the wall time of ingest, training, export and scoring of each fold on this "
            f"2-core CPU; records ingested by an earlier run with the same settings are "
            f"reused, and their ingest is then not counted).\n\n{table.rstrip()}\n")


# --- Embedding: a pretrained backbone's realtime factor on real recordings ------------------

EMBED_TITLE = "Embedding: realtime factor of a pretrained backbone"


def bench_embed(files: list[Path], model_cfg: config.ModelConfig, repeats: int = 3) -> dict:
    """Seconds of audio embedded per second of wall time, whole recordings, median of
    ``repeats``: decode + resample to the backbone's rate + windows (``analyze``'s
    windowing, no overlap), alone and followed by the backbone.

    Returns:
        ``{"files", "audio_h", "decode_s", "embed_s", "decode_realtime", "embed_realtime",
        "windows", "backbone"}`` (seconds are medians).
    """
    from tfbird import analyze, backbones
    from tfbird.waveform import stream_waveform

    backbone = backbones.load_backbone(model_cfg)
    backbone.embed(np.zeros([1, backbone.window_samples], np.float32))  # Start-up, untimed.

    def windows_of(path):
        blocks = stream_waveform(path, backbone.sample_rate_hz, 60.0)
        return analyze.batched(analyze.stream_windows(blocks, backbone.window_samples,
                                                      backbone.window_samples), 32)

    def timed(embed: bool) -> tuple[float, int]:
        started, windows = time.perf_counter(), 0
        for path in files:
            for _, batch in windows_of(path):
                windows += len(batch)
                if embed:
                    backbone.embed(batch)
        return time.perf_counter() - started, windows

    audio_s = sum(analyze.recording_duration_s(path) for path in files)
    decode = [timed(False) for _ in range(repeats)]
    embedded = [timed(True) for _ in range(repeats)]
    windows = decode[0][1]
    decode_s = statistics.median(t for t, _ in decode)
    embed_s = statistics.median(t for t, _ in embedded)
    return {"files": len(files), "audio_h": audio_s / 3600, "windows": windows,
            "decode_s": decode_s, "embed_s": embed_s, "decode_realtime": audio_s / decode_s,
            "embed_realtime": audio_s / embed_s, "backbone": backbone.describe()}


def format_embed_section(result: dict, command: str) -> str:
    backbone = result["backbone"]
    return (f"## {EMBED_TITLE}\n\nCommand: `{command}` on {datetime.date.today()}, "
            f"{os.cpu_count()} CPU cores ({platform.machine()}). Medians of the repeats; whole "
            f"recordings read in blocks and resampled to {backbone['sample_rate_hz']} Hz, "
            f"windows of {backbone['window_samples']} samples without overlap, "
            f"{os.cpu_count()} interpreter threads.\n\n"
            f"| {backbone['name']} {backbone['version']} | files | audio (h) | windows | "
            f"seconds | realtime factor |\n|---|---:|---:|---:|---:|---:|\n"
            f"| decode + resample + windows | {result['files']} | {result['audio_h']:.2f} | "
            f"{result['windows']} | {result['decode_s']:.1f} | {result['decode_realtime']:.0f}x |\n"
            f"| ... + embedding | {result['files']} | {result['audio_h']:.2f} | "
            f"{result['windows']} | {result['embed_s']:.1f} | {result['embed_realtime']:.0f}x |\n"
            f"\nThe model's licence: {backbone['licence']}.\n")


# --- Analysis: realtime factor per model form, and scaling over workers --------------------

ANALYZE_TITLE = "Analysis: realtime factor and workers"
ANALYZE_RESULTS = Path("benchmarks") / "analyze.json"
# Plot file -> (scaling_table column, y-axis label).
SCALING_PLOTS = {"analyze_wall_clock.png": ("seconds", "Wall-clock (s)"),
                 "analyze_speedup.png": ("speedup", "Speedup over 1 worker"),
                 "analyze_efficiency.png": ("efficiency", "Parallel efficiency")}


def analysis_models(paths: list[str | Path]) -> list[tuple[str, Path]]:
    """``(name, path)`` of each model form found: ``keras`` (a run folder), ``saved_model``
    (an export version folder) and ``tflite_<variant>`` (each TFLite file in that folder)."""
    from tfbird.artifacts import TFLITE_FILES, model_form

    models = []
    for path in map(Path, paths):
        form = model_form(path)
        if form == "run":
            models.append(("keras", path))
        elif form == "saved_model":
            models.append(("saved_model", path))
            models += [(f"tflite_{variant}", path / name)
                       for variant, name in TFLITE_FILES.items()
                       if (path / name).is_file()]
        elif form == "tflite":
            models.append((f"tflite_{path.stem}", path))
        else:
            raise ValueError("bench analyze --model takes run folders, export version folders "
                             f"and .tflite files. Received: model={str(path)!r}")
    return models


def time_analysis(inputs: list[str | Path], model: Path, repeats: int, cold: bool = False,
                  **settings) -> dict:
    """Median wall time of ``analyze`` over ``inputs`` (outputs rewritten each run).

    ``settings`` are ``AnalyzeConfig`` fields (``jobs``, ``dask_local``, ...). The untimed
    warm-up analyses the first recording only: it reads the model into this process, so
    the time is the steady-state analysis, unless ``cold``: then each run loads it again,
    as worker processes (``jobs`` > 1, ``threads_per_job``, Dask) always do, so that runs
    compare fairly.
    """
    from tfbird import analyze
    from tfbird.config import AnalyzeConfig

    first_recording = [analyze.collect_recordings(inputs)[0][0]]
    with tempfile.TemporaryDirectory() as out_dir:
        cfg = AnalyzeConfig(min_conf=0.5, overwrite=True, out_dir=out_dir, **settings)
        summaries = []

        def run(recordings=inputs):
            if cold:
                analyze.load_predictor.cache_clear()
            summaries.append(analyze.analyze(recordings, model, cfg, progress=False))

        seconds = median_seconds(run, repeats, warm_up=lambda: run(first_recording))
    if summaries[-1].failed:
        raise ValueError(f"Some benchmark files could not be analysed; see the error log. "
                         f"Received: failed={summaries[-1].failed}")
    return {"audio_s": summaries[-1].audio_s, "seconds": seconds}


def bench_analyze(inputs: list[str | Path], models: list[tuple[str, Path]], repeats: int = 3,
                  workers: int = 2) -> dict:
    """Realtime factor of each model form with one worker, then ``jobs 1``, ``jobs
    workers`` and ``dask-local workers`` with the first model.

    Returns:
        ``{"files", "audio_s", "models": [{"name", "seconds"}], "scaling": [{"mode",
        "workers", "seconds"}]}`` (JSON-ready; ``scaling_table`` adds the ratios).
    """
    from tfbird.analyze import collect_recordings

    result = {"files": len(collect_recordings(inputs)), "audio_s": 0.0, "models": [],
              "scaling": []}
    for name, path in models:
        timing = time_analysis(inputs, path, repeats)
        result["audio_s"] = timing["audio_s"]
        result["models"].append({"name": name, "seconds": timing["seconds"]})
    scaling_model = models[0][1]
    # One thread per worker: a worker is one core's worth of work, as in the scaling plots.
    for mode, count, settings in [("jobs", 1, {"jobs": 1}),
                                  ("jobs", workers, {"jobs": workers}),
                                  ("dask-local", workers, {"dask_local": workers})]:
        timing = time_analysis(inputs, scaling_model, repeats, threads_per_job=1, **settings)
        result["scaling"].append({"mode": mode, "workers": count, "seconds": timing["seconds"]})
    # The default, for reference: one process, TensorFlow's threads over all the cores.
    result["one_process_seconds"] = time_analysis(inputs, scaling_model, repeats,
                                                  cold=True)["seconds"]
    result["scaling_model"] = models[0][0]
    return result


def scaling_table(result: dict) -> pd.DataFrame:
    """``mode, workers, seconds, speedup, efficiency``: against ``jobs`` with 1 worker."""
    table = pd.DataFrame(result["scaling"], columns=["mode", "workers", "seconds"])
    single = single_worker(table)["seconds"]
    if len(single) != 1:
        raise ValueError(f"The scaling results need exactly one 'jobs' run with 1 worker. "
                         f"Received: scaling={result['scaling']}")
    table["speedup"] = float(single.iloc[0]) / table["seconds"]
    table["efficiency"] = table["speedup"] / table["workers"]
    return table


def single_worker(table: pd.DataFrame) -> pd.DataFrame:
    """The ``jobs`` run with 1 worker: the reference of every speedup."""
    return table[(table["mode"] == "jobs") & (table["workers"] == 1)]


def format_analyze_section(result: dict, command: str) -> str:
    """The ``ANALYZE_TITLE`` section of ``BENCHMARKS.md``."""
    audio_s = result["audio_s"]
    models = "\n".join(f"| {row['name']} | {row['seconds']:.2f} | {audio_s / row['seconds']:.0f}x |"
                       for row in result["models"])
    scaling = "\n".join(
        f"| `{row.mode} {row.workers}` | {row.seconds:.2f} | {row.speedup:.2f}x | "
        f"{row.efficiency:.0%} |" for row in scaling_table(result).itertuples())
    return (f"## {ANALYZE_TITLE}\n\n"
            f"`{command}` on {datetime.date.today()}, {os.cpu_count()} CPU cores "
            f"({platform.machine()}), TensorFlow {tf.__version__}.\n\n"
            f"`tfbird analyze` over {result['files']} files, {audio_s / 3600:.2f} h of audio "
            f"(decode, windows, inference, outputs); median of the timed runs after a "
            f"warm-up.\n\n"
            f"| model | seconds | realtime factor |\n|---|---|---|\n{models}\n\n"
            f"Workers, with the {result.get('scaling_model', 'first')} model: worker processes "
            f"of one thread each (`--threads-per-job 1`). Each worker imports TensorFlow and "
            f"loads the model inside the timed run (a fixed start-up cost), so the speedup "
            f"grows with the audio: use several hours.\n\n"
            f"| run | seconds | speedup | efficiency |\n|---|---|---|---|\n{scaling}\n\n"
            f"{one_process_line(result)}"
            f"Plots: `python -m tfbird bench analyze --plots` (from `{ANALYZE_RESULTS}`). The "
            f"macro ROC-AUC change of each TFLite variant is printed by `python export.py "
            f"--quantize ...`.\n")


def one_process_line(result: dict) -> str:
    """The default ``--jobs 1`` (this process, TensorFlow's threads on every core) against
    one single-thread worker, when measured."""
    seconds = result.get("one_process_seconds")
    if seconds is None:
        return ""
    single = float(single_worker(scaling_table(result))["seconds"].iloc[0])
    return (f"The default `--jobs 1` analyses in one process with TensorFlow's threads on all "
            f"{os.cpu_count()} cores: {seconds:.2f} s, {single / seconds:.2f}x one "
            f"single-thread worker.\n\n")


def plot_scaling(result: dict, out_dir: str | Path) -> list[Path]:
    """The original project's three plots against workers: wall-clock, speedup and
    parallel efficiency, one line per mode (``jobs``, ``dask-local``), as PNGs."""
    from matplotlib.figure import Figure

    table = scaling_table(result)
    single = single_worker(table)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (column, ylabel) in SCALING_PLOTS.items():
        figure = Figure(figsize=(4.5, 3.2))
        axes = figure.add_subplot()
        for mode, rows in table.groupby("mode", sort=False):
            if mode != "jobs":  # Every mode starts from the same single worker.
                rows = pd.concat([single, rows])
            axes.plot(rows["workers"], rows[column], marker="o", label=mode)
        if column != "seconds":
            ideal = np.arange(1, table["workers"].max() + 1)
            axes.plot(ideal, ideal if column == "speedup" else np.ones_like(ideal), "k--",
                      linewidth=0.8, label="ideal")
        axes.set(xlabel="workers", ylabel=ylabel, xticks=sorted(table["workers"].unique()))
        axes.legend()
        figure.tight_layout()
        path = out_dir / name
        figure.savefig(path, dpi=80)
        paths.append(path)
    return paths


TRAINING_TITLE = "Training: reader, step throughput and input wait"
TRAINING_VARIANTS = {
    # name: (model overrides, train overrides)
    "gap": ({"head": "gap"}, {}),
    "sed": ({"head": "sed"}, {}),
    "gap, mixed_bfloat16": ({"head": "gap"}, {"mixed_precision": "mixed_bfloat16"}),
    "gap, mixed_float16": ({"head": "gap"}, {"mixed_precision": "mixed_float16"}),
    "gap, XLA (jit_compile)": ({"head": "gap"}, {"jit_compile": True}),
}


def bench_reader(records_dir: Path, cfg: config.Config, batches: int = 40,
                 repeats: int = 3) -> dict:
    """Examples/s of the training reader alone: shards -> parsed, shuffled, augmented batches.

    Each repeat opens a fresh pipeline, lets its shuffle buffer fill (5 batches), then times
    ``batches`` batches.
    """
    manifest = records.read_manifest(records_dir)
    batch_size = cfg.train.global_batch_size
    rates = {}
    for name, augment in (("reader, no augmentation", None), ("reader + augmentation", cfg.augment)):
        def read(augment=augment):
            batches_read = iter(dataset.make_dataset(
                records_dir, manifest, "train", batch_size,
                dataclasses.replace(training_read(cfg), augment=augment)))
            for _ in range(5):
                next(batches_read)
            started = time.perf_counter()
            for _ in range(batches):
                next(batches_read)
            return time.perf_counter() - started

        seconds = statistics.median(read() for _ in range(repeats))
        rates[name] = batches * batch_size / seconds
    return rates


def training_read(cfg: config.Config) -> dataset.ReadSpec:
    """The reader of ``training.train`` (``ReadSpec.of_training``), in this process (no
    tf.data service) and giving log-mels, as the benchmarked classifier takes them."""
    return dataclasses.replace(dataset.ReadSpec.of_training(cfg), data_service=None,
                               frontend_in_model=False)


def compiled_classifier(model_cfg: config.ModelConfig, train_cfg: config.TrainConfig,
                        manifest: dict, steps: int) -> keras.Model:
    """The classifier built (in ``train.mixed_precision``) and compiled as ``training.train``
    does, without a strategy, for inputs read from records with this ``manifest``."""
    with training.precision_policy(train_cfg.mixed_precision):
        classifier = model_lib.build_classifier(model_cfg, len(manifest["labels"]),
                                                dataset.input_shape(manifest))
    training.compile_classifier(classifier, train_cfg, steps_per_epoch=steps,
                                task=model_cfg.task)
    return classifier


def bench_training_steps(records_dir: Path, cfg: config.Config, steps: int = 5,
                         variants: dict = TRAINING_VARIANTS) -> dict:
    """Training examples/s of each variant: median train step on one fixed batch of real
    log-mels (input excluded), after two warm-up steps (which include XLA compilation)."""
    manifest = records.read_manifest(records_dir)
    logmel, targets = next(iter(dataset.make_dataset(
        records_dir, manifest, "train", cfg.train.global_batch_size, training_read(cfg))))
    rates = {}
    for name, (model_overrides, train_overrides) in variants.items():
        model_cfg = dataclasses.replace(cfg.model, **model_overrides)
        train_cfg = dataclasses.replace(cfg.train, **train_overrides)
        classifier = compiled_classifier(model_cfg, train_cfg, manifest, steps)
        step_s = []
        for step in range(steps + 2):
            started = time.perf_counter()
            classifier.train_on_batch(logmel, targets)
            if step >= 2:
                step_s.append(time.perf_counter() - started)
        rates[name] = cfg.train.global_batch_size / statistics.median(step_s)
        keras.backend.clear_session()
    return rates


def input_wait_share(records_dir: Path, cfg: config.Config, steps: int = 8) -> float:
    """Share of step time spent waiting for the input pipeline, from a profiler trace.

    Trains ``steps`` steps of the ``gap`` model on the real reader (with augmentation),
    profiles steps 3..steps with Keras' TensorBoard callback and sums, in the trace, the time
    in ``IteratorGetNextOp::DoCompute`` (the training step blocked on the next batch) over the
    time of the profiled batches.
    """
    from xprof.convert import raw_to_tool_data  # tensorboard-plugin-profile (dev extra)

    manifest = records.read_manifest(records_dir)
    batches = dataset.make_dataset(
        records_dir, manifest, "train", cfg.train.global_batch_size, training_read(cfg))
    classifier = compiled_classifier(cfg.model, cfg.train, manifest, steps)
    with tempfile.TemporaryDirectory() as log_dir:
        profiler = keras.callbacks.TensorBoard(log_dir=log_dir, profile_batch=(3, steps))
        classifier.fit(batches, epochs=1, steps_per_epoch=steps, callbacks=[profiler],
                       shuffle=False, verbose=0)
        traces = sorted(Path(log_dir).rglob("*.xplane.pb"))
        if not traces:
            raise ValueError(f"The profiler wrote no trace under {log_dir}.")
        trace, _ = raw_to_tool_data.xspace_to_tool_data([str(traces[-1])], "trace_viewer", {})
    events = [e for e in json.loads(trace)["traceEvents"] if e.get("ph") == "X"]
    waiting_us = [e["dur"] for e in events if e["name"] == "IteratorGetNextOp::DoCompute"]
    step_us = sum(e["dur"] for e in events if e["name"] == "Profiled batch")
    if not waiting_us or not step_us:
        raise ValueError(f"The trace has no IteratorGetNextOp or Profiled batch events, so the "
                         f"input wait cannot be measured. Received: trace={traces[-1]}")
    keras.backend.clear_session()
    return sum(waiting_us) / step_us


def format_training_section(result: dict, command: str) -> str:
    """The ``TRAINING_TITLE`` section of ``BENCHMARKS.md``."""
    reader = "\n".join(f"| {name} | {rate:.0f} |" for name, rate in result["reader"].items())
    base = result["steps"]["gap"]
    steps = "\n".join(f"| {name} | {rate:.1f} | {rate / base:.2f}x |"
                       for name, rate in result["steps"].items())
    return (f"## {TRAINING_TITLE}\n\n"
            f"`{command}` on {datetime.date.today()}, {os.cpu_count()} CPU cores "
            f"({platform.machine()}), TensorFlow {tf.__version__}, one device (no "
            f"strategy), global batch {result['batch_size']}, log-mels "
            f"{result['logmel_shape']} resized to {result['image_size']}.\n\n"
            f"The reader alone (shards -> parsed, shuffled, batched; median of "
            f"{result['repeats']} runs):\n\n"
            f"| reader | examples/s |\n|---|---|\n{reader}\n\n"
            f"Training steps on one fixed batch (median step after 2 warm-up steps):\n\n"
            f"| model | examples/s | vs gap float32 |\n|---|---|---|\n{steps}\n\n"
            f"Share of step time waiting for input (profiler trace of the `gap` model on the "
            f"real reader with augmentation: `IteratorGetNextOp` time / profiled batch time): "
            f"**{result['input_wait_share']:.3%}**.\n")


def bench_training(records_dir: Path, cfg: config.Config, repeats: int = 3) -> dict:
    """``bench_reader``, ``bench_training_steps`` and ``input_wait_share`` together."""
    manifest = records.read_manifest(records_dir)
    return {"reader": bench_reader(records_dir, cfg, repeats=repeats),
            "steps": bench_training_steps(records_dir, cfg),
            "input_wait_share": input_wait_share(records_dir, cfg),
            "batch_size": cfg.train.global_batch_size, "repeats": repeats,
            "logmel_shape": tuple(manifest["feature"]["shape"]),
            "image_size": cfg.model.image_size}
