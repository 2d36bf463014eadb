"""``tfbird`` command line: parse arguments, load the config, call one library function.

Commands: ``synth``, ``ingest``, ``features``, ``train``, ``export``, ``bench``. Library errors
(``ValueError``) are printed as one line and exit with status 2; nothing here holds logic that
the library does not.

Examples:
    python -m tfbird synth --out data/demo
    python -m tfbird ingest --data data/demo --out records/demo
    python -m tfbird features recording.flac --out recording.npy
    python train.py --strategy mirrored
    python export.py --tflite
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Before TensorFlow is imported.

DEFAULT_CONFIG = "configs/demo.yaml"
log = logging.getLogger("tfbird")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    try:
        return args.command(args) or 0
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfbird", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    synth = commands.add_parser("synth", help="write the synthetic bird-call corpus")
    add_config_arguments(synth)
    synth.add_argument("--out", required=True, help="output folder (BirdCLEF layout)")
    synth.set_defaults(command=run_synth)

    ingest = commands.add_parser("ingest", help="recordings -> TFRecord shards of log-mels")
    add_config_arguments(ingest)
    ingest.add_argument("--data", required=True, help="BirdCLEF folder or CSV of recordings")
    ingest.add_argument("--out", required=True, help="records folder, e.g. records/NAME")
    ingest.set_defaults(command=run_ingest)

    features = commands.add_parser("features", help="log-mel of a whole recording to .npy")
    add_config_arguments(features)
    features.add_argument("file", help="audio file")
    features.add_argument("--out", required=True, help="output .npy: float32 [frames, mels]")
    features.set_defaults(command=run_features)

    train = commands.add_parser("train", help="ingest if needed, train, score")
    add_config_arguments(train)
    train.add_argument("--data", help="data set (default: data.path of the config; the demo "
                                      "config synthesises it when missing)")
    train.add_argument("--records", help="records folder (default: data.records)")
    train.add_argument("--run-dir", help="run folder (default: runs/<timestamp>)")
    train.add_argument("--epochs", type=int, help="= --set train.epochs=N")
    train.add_argument("--weights", help="none | imagenet | PATH of ResNet50 notop weights")
    train.add_argument("--strategy", choices=["default", "mirrored"], help="= train.strategy")
    train.add_argument("--reingest", action="store_true", help="rewrite existing records")
    train.set_defaults(command=run_train)

    export = commands.add_parser("export", help="run -> SavedModel (TF Serving) [+ TFLite]")
    add_config_arguments(export)
    export.add_argument("--run-dir", help="training run (default: newest under train.runs_dir)")
    export.add_argument("--tflite", action="store_true", help="also write model.tflite")
    export.add_argument("--version", type=int, help="version folder (default: next integer)")
    export.add_argument("--model-name", help="= export.model_name")
    export.add_argument("--check-audio", default=None,
                        help="folder or file of recordings whose first 5-s windows are used to "
                             "check that Keras, SavedModel and TFLite agree (default: the "
                             "run's data set)")
    export.set_defaults(command=run_export)

    bench = commands.add_parser("bench", help="benchmarks against librosa -> BENCHMARKS.md")
    add_config_arguments(bench)
    bench.add_argument("what", choices=["frontend", "ingest"],
                       help="frontend: whole recordings to log-mels; ingest: a data set to records")
    bench.add_argument("--audio", help="frontend: folder of recordings")
    bench.add_argument("--data", help="ingest: data set (BirdCLEF folder or CSV)")
    bench.add_argument("--repeats", type=int, default=3, help="timed runs (median is reported)")
    bench.add_argument("--out", default="BENCHMARKS.md", help="Markdown file to update")
    bench.set_defaults(command=run_bench)
    return parser


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help=f"YAML config (default: {DEFAULT_CONFIG})")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config value, e.g. train.epochs=3")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def load_config(args, extra_overrides: list[str] = ()):
    from tfbird import config

    path = args.config if Path(args.config).is_file() or args.config != DEFAULT_CONFIG else None
    return config.load(path, [*extra_overrides, *args.overrides])


def run_synth(args) -> int:
    from tfbird import synth

    cfg = load_config(args)
    metadata = synth.synthesize_corpus(args.out, cfg.synth, progress=not args.quiet)
    print(f"Synthetic corpus: {metadata}")
    return 0


def run_ingest(args) -> int:
    from tfbird import ingest

    cfg = load_config(args)
    manifest = ingest.ingest(cfg, args.data, args.out, progress=not args.quiet)
    print_ingest_summary(manifest, args.out)
    return 0


def print_ingest_summary(manifest: dict, out_dir) -> None:
    splits = manifest["splits"]
    counts = ", ".join(f"{name}: {s['recordings']} recordings, {s['examples']} windows"
                       for name, s in splits.items())
    failed = manifest["failures"]["count"]
    print(f"Records in {out_dir}: {counts}; {failed} file(s) failed"
          + (f" (see {Path(out_dir) / manifest['failures']['file']})" if failed else ""))


def run_features(args) -> int:
    import numpy as np

    from tfbird.frontend import build_frontend
    from tfbird.waveform import load_waveform

    cfg = load_config(args)
    waveform = load_waveform(args.file, cfg.audio.sample_rate_hz)
    logmel = build_frontend(cfg.audio, cfg.frontend)(waveform[None])[0].numpy()
    np.save(args.out, logmel.astype(np.float32))
    print(f"Log-mel {logmel.shape[0]} frames x {logmel.shape[1]} mels -> {args.out}")
    return 0


def run_train(args) -> int:
    overrides = [f"{key}={value}" for key, value in (
        ("data.path", args.data), ("data.records", args.records),
        ("train.epochs", args.epochs), ("model.weights", args.weights),
        ("train.strategy", args.strategy)) if value is not None]
    cfg = load_config(args, overrides)
    from tfbird import pipeline

    run_dir, scores = pipeline.prepare_and_train(
        cfg, data_given=args.data is not None, run_dir=args.run_dir, reingest=args.reingest,
        progress=not args.quiet)
    print(f"Run folder: {run_dir}")
    print("Validation: " + json.dumps(scores))
    return 0


def run_export(args) -> int:
    cfg = load_config(args)
    from tfbird import exporter, pipeline

    run_dir = Path(args.run_dir) if args.run_dir else exporter.newest_run(cfg.train.runs_dir)
    result = exporter.export_run(run_dir, exports_dir=cfg.export.exports_dir,
                                 model_name=args.model_name or cfg.export.model_name,
                                 version=args.version, tflite=args.tflite)
    print(f"SavedModel: {result.saved_model_dir}")
    if result.tflite_path:
        print(f"TFLite: {result.tflite_path} ({result.tflite_path.stat().st_size / 1e6:.1f} MB)")
    run_cfg = config_of_run(run_dir)
    check_audio = args.check_audio or run_cfg.data.path
    waveforms = pipeline.check_windows(check_audio, run_cfg.audio, count=8)
    differences = exporter.compare_outputs(result, waveforms)
    print(f"Agreement on {len(waveforms)} 5-s windows from {check_audio} "
          f"(largest |p - p_keras|): " + ", ".join(f"{k} {v:.2e}" for k, v in differences.items()))
    return 0


def run_bench(args) -> int:
    from tfbird import bench, pipeline

    cfg = load_config(args)
    if args.what == "frontend":
        if not args.audio:
            raise ValueError("bench frontend needs --audio DIR. Received: audio=None")
        result = bench.bench_frontend(pipeline.audio_files(args.audio), cfg, args.repeats)
        title, what = "Front end: recording to log-mel", (
            "Decode, resample to 32 kHz and log-mel of each whole recording (librosa.load + "
            "melspectrogram + power_to_db vs tfbird's decode + LogMelSpectrogram), over")
    else:
        if not args.data:
            raise ValueError("bench ingest needs --data DIR_OR_CSV. Received: data=None")
        result = bench.bench_ingest(Path(args.data), cfg, args.repeats)
        title, what = "Ingest: data set to log-mel windows", (
            "A sequential librosa loop (load, resample, 5-s windows, log-mel per window) vs "
            "`tfbird ingest` (tf.data pipeline, writing TFRecord shards), over")
    section = bench.format_section(title, result, what, args.repeats)
    bench.write_section(Path(args.out), title, section)
    print(section)
    return 0


def config_of_run(run_dir: Path):
    from tfbird import config
    from tfbird.training import CONFIG_FILE

    return config.load(run_dir / CONFIG_FILE)


if __name__ == "__main__":
    sys.exit(main())
