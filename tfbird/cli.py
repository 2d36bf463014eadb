"""``tfbird`` command line: parse arguments, load the config, call one library function.

Commands: ``synth``, ``ingest``, ``eda``, ``features``, ``train``, ``cv``, ``evaluate``, ``export``,
``analyze``, ``data-service``, ``bench``. Library errors (``ValueError``) are printed as one line and exit with
status 2; nothing here holds logic that the library does not.

Examples:
    python -m tfbird synth --out data/demo
    python -m tfbird ingest --data data/demo --out records/demo
    python -m tfbird eda --data data/demo --out eda/demo
    python -m tfbird features recording.flac --out recording.npy
    python train.py --strategy mirrored
    python -m tfbird cv --data esc10/esc10.csv --fold-column fold --config configs/small.yaml
    python -m tfbird evaluate --run-dir runs/20250101-120000 --split valid
    python export.py --tflite
    python -m tfbird analyze recordings/ --model exports/tfbird/1 --format csv raven
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import logging
import os
import sys
from pathlib import Path
from typing import Callable


from tfbird import config  # noqa: E402  (no TensorFlow: the embedding backbones' names)

DEFAULT_CONFIG = "configs/demo.yaml"
EXIT_WRITE_FAILED = 3  # the output could not be written: a full disk or a read-only folder
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
EXIT_SOME_FAILED = 1  # analyze: some inputs failed (listed in errors.csv).
EXIT_USAGE = 2  # A bad argument, config or input: the one-line error names it.
log = logging.getLogger("tfbird")
DESCRIPTION = """Train bird-sound classifiers on your recordings and find the species in long
recordings: tfbird turns recordings into log-mel records, trains a ResNet50, exports it for
TF Serving and TFLite, and writes detection tables (CSV, BirdNET's Raven, CSV and
Kaleidoscope tables, Audacity labels)."""
EXAMPLES = """common commands:
  python train.py                          train the demo (synthetic species) end to end
  python train.py --data my_birds --config small
                                           train on a folder per species (my_birds/<species>/*.wav)
  python -m tfbird evaluate --run-dir runs/<timestamp>
                                           score a run: metrics, per-class table, thresholds
  python export.py --run-dir runs/<timestamp> --tflite
                                           write exports/tfbird/<version>/ (SavedModel + TFLite)
  python -m tfbird analyze recordings/ --model exports/tfbird/1 --out detections --format raven
                                           detect species in long recordings
  python -m tfbird eda --data my_birds --out eda/my_birds
                                           look at a data set before training

Run "python -m tfbird COMMAND --help" for a command's options. Errors are one line naming the
value at fault, with exit status 2."""
ANALYZE_EXIT_STATUS = f"""exit status:
  0  every input was analysed (or its outputs were up to date)
  {EXIT_SOME_FAILED}  some inputs failed; OUT/errors.csv names each with the reason
  {EXIT_USAGE}  usage error: a bad argument, model, threshold file or input list"""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_tensorflow()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    logging.getLogger("absl").setLevel(logging.WARNING)  # SavedModel renaming chatter.
    try:
        return args.command(args) or 0
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:
        if error.errno not in WRITE_ERRNOS:
            raise
        print(write_failure_message(error), file=sys.stderr)
        return EXIT_WRITE_FAILED


def write_failure_message(error: OSError) -> str:
    """One line for a write that a full disk or a read-only folder refused: the path, the
    reason, and that rerunning the same command resumes (no part of a file is kept)."""
    return (f"error: could not write {error.filename or 'the output'}: {error.strerror}. "
            f"Free space or make the folder writable, then rerun the same command: it resumes, "
            f"and no half-written file is kept. Received: errno={errno.errorcode.get(error.errno)}")


def quiet_tensorflow() -> None:
    """Hides TensorFlow's C++ start-up lines, for the command line only (library users keep
    TensorFlow's own settings).

    ``TF_CPP_MIN_LOG_LEVEL=3`` (unless set) hides its C++ log lines, such as ``E0000 ...
    failed call to cuInit ... (303)`` on a machine without a GPU and ``oneDNN supports DT_BOOL
    only on platforms with AVX-512``: none is a failure, and real errors still reach Python
    as exceptions. The lines printed while its libraries load come before any log level
    applies (``WARNING: All log messages before absl::InitializeLog()``, ``oneDNN custom
    operations are on``, ``Could not find cuda drivers``), so TensorFlow is imported with
    the process's stderr sent to a temporary file, printed only if the import fails.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules:
        return
    import tempfile

    sys.stderr.flush()
    saved_stderr = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(saved_stderr, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved_stderr, 2)
            os.close(saved_stderr)


def build_parser() -> argparse.ArgumentParser:
    """The ``tfbird`` parser: one sub-command per ``add_*_command`` below, in help order."""
    parser = argparse.ArgumentParser(prog="tfbird", description=DESCRIPTION, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    add_synth_command(commands)
    add_ingest_command(commands)
    add_eda_command(commands)
    add_features_command(commands)
    add_train_command(commands)
    add_cv_command(commands)
    add_evaluate_command(commands)
    add_export_command(commands)
    add_analyze_command(commands)
    add_embed_command(commands)
    add_search_command(commands)
    add_data_service_command(commands)
    add_bench_command(commands)
    return parser


def add_synth_command(commands) -> None:
    """The ``synth`` command and its flags."""
    synth = commands.add_parser("synth", help="write the synthetic bird-call corpus")
    add_config_arguments(synth)
    synth.add_argument("--out", required=True, help="output folder (BirdCLEF layout)")
    synth.set_defaults(command=run_synth)


def add_ingest_command(commands) -> None:
    """The ``ingest`` command and its flags."""
    ingest = commands.add_parser("ingest", help="recordings -> TFRecord shards of log-mels")
    add_config_arguments(ingest)
    ingest.add_argument("--data", required=True, help="data set folder or CSV of recordings")
    ingest.add_argument("--out", required=True, help="records folder, e.g. records/NAME")
    add_layout_arguments(ingest)
    add_fold_arguments(ingest)
    add_config_flag(ingest, "--min-overlap-s", key="data.min_overlap_s", type=float,
                    help="= data.min_overlap_s: Raven box overlap that labels a window")
    add_config_flag(ingest, "--max-failures", key="data.max_failures", type=float,
                    help="= data.max_failures: failed files allowed before the exit status "
                         "is non-zero (a count, or a fraction of the files if below 1)")
    add_config_flag(ingest, "--store", key="data.store", choices=["logmel", "pcm"],
                    help="= data.store: records hold float16 log-mels (default) or int16 "
                         "PCM windows (the front end then runs in the reader or the model)")
    ingest.add_argument("--workers", type=int, default=1,
                        help="K processes share the shards (run one per --worker-index, e.g. "
                             "a job array: no scheduler needed); the last to finish writes the "
                             "manifest")
    ingest.add_argument("--worker-index", type=int, default=0, help="I in 0..K-1")
    ingest.add_argument("--dask-scheduler", metavar="ADDRESS",
                        help="send the shards to this Dask scheduler, e.g. tcp://host:8786 "
                             "(pip install 'tfbird[dask]'; workers must see the same paths)")
    ingest.add_argument("--dask-local", type=int, default=0, metavar="N",
                        help="send the shards to a local Dask cluster of N worker processes")
    ingest.add_argument("--restart", action="store_true",
                        help="rewrite this run's shards instead of resuming finished ones")
    ingest.set_defaults(command=run_ingest)


def add_eda_command(commands) -> None:
    """The ``eda`` command and its flags."""
    eda = commands.add_parser("eda", help="data set report: PNG charts and a Markdown summary")
    add_config_arguments(eda)
    eda.add_argument("--data", required=True, help="data set folder or CSV of recordings")
    eda.add_argument("--out", required=True, help="report folder")
    add_layout_arguments(eda)
    eda.add_argument("--examples", type=int, default=4, help="example log-mel images")
    eda.set_defaults(command=run_eda)


def add_features_command(commands) -> None:
    """The ``features`` command and its flags."""
    features = commands.add_parser("features", help="log-mel of a whole recording to .npy")
    add_config_arguments(features)
    features.add_argument("file", help="audio file")
    features.add_argument("--out", required=True, help="output .npy: float32 [frames, mels]")
    features.set_defaults(command=run_features)


def add_train_command(commands) -> None:
    """The ``train`` command and its flags."""
    train = commands.add_parser(
        "train", help="ingest if needed, train, score",
        description="Ingests the data set into records when they are missing or stale, "
                    "trains, and scores the best epoch on the validation split. The data set's "
                    "layout is detected from its files (see --layout). Rerunning the command with the same --run-dir resumes a killed run; "
                    "a finished one needs --overwrite.")
    add_config_arguments(train)
    add_config_flag(train, "--data", key="data.path",
                    help="data set folder or CSV (default: data.path of the config; the demo "
                         "config synthesises it when missing)")
    add_config_flag(train, "--records", key="data.records",
                    help="records folder (default with --data: records/<data set "
                         "name>[-fold<K>], never the demo's; without --data: data.records "
                         "of the config, records/demo)")
    add_layout_arguments(train)
    add_fold_arguments(train)
    train.add_argument("--run-dir", help="run folder (default: runs/<timestamp>)")
    add_config_flag(train, "--epochs", key="train.epochs", type=int, help="= --set train.epochs=N")
    add_config_flag(train, "--weights", key="model.weights",
                    help="none | imagenet | PATH of ResNet50 notop weights")
    add_config_flag(train, "--strategy", key="train.strategy",
                    choices=["default", "mirrored", "multiworker", "tpu"],
                    help="= train.strategy (multiworker reads the cluster from TF_CONFIG; "
                         "tpu uses train.tpu)")
    train.add_argument("--reingest", action="store_true", help="rewrite existing records")
    train.add_argument("--overwrite", action="store_true",
                       help="train from scratch in a --run-dir that holds a finished run "
                            "(without it, that is refused; a killed run, with backup/, "
                            "always resumes)")
    add_config_flag(train, "--profile-batch", key="train.profile_batch",
                    convert=parse_profile_batch, metavar="START,END",
                    help="= train.profile_batch: trace training batches START..END "
                         "(from 1) with the TensorBoard profiler into RUN/logs")
    add_config_flag(train, "--deterministic", key="train.deterministic", action="store_true",
                    help="= train.deterministic: enable TensorFlow op determinism")
    add_config_flag(train, "--data-service", key="train.data_service",
                    metavar="grpc://HOST:PORT",
                    help="= train.data_service: run the training input on this tf.data "
                         "service (see data-service)")
    train.set_defaults(command=run_train)


def add_cv_command(commands) -> None:
    """The ``cv`` command and its flags."""
    cv = commands.add_parser(
        "cv", help="cross-validation on the data set's folds, beside a logistic-regression "
                   "baseline -> cv.json, cv.md")
    add_config_arguments(cv)
    cv.add_argument("--data", required=True, help="data set (CSV or folder) with a fold column")
    add_config_flag(cv, "--fold-column", key="data.fold_column",
                    required=True, help="the column naming each recording's fold, e.g. fold")
    cv.add_argument("--folds", nargs="+", help="folds to hold out (default: all)")
    cv.add_argument("--out", help="cv folder (default: runs/cv-<timestamp>, or the unfinished "
                                  "one of the same command)")
    add_layout_arguments(cv)
    add_config_flag(cv, "--strategy", key="train.strategy", choices=["default", "mirrored"],
                    help="= train.strategy")
    cv.set_defaults(command=run_cv)


def add_evaluate_command(commands) -> None:
    """The ``evaluate`` command and its flags."""
    evaluate = commands.add_parser(
        "evaluate", help="score a run on a split: metrics, per-class table, thresholds, plots")
    evaluate.add_argument("--run-dir", required=True, help="training run folder")
    evaluate.add_argument("--records", help="records folder (default: data.records of the run)")
    evaluate.add_argument("--split", default="valid", help="split of the records (default valid)")
    evaluate.add_argument("--out", help="report folder (default: RUN/evaluation/SPLIT)")
    evaluate.add_argument("--batch-size", type=int, help="examples per prediction batch")
    evaluate.add_argument("--call-onsets", metavar="CSV",
                          help="call_onsets.csv of the data (synthetic corpus): also score where "
                               "a sed model's framewise peaks fall (localization.csv/json)")
    evaluate.set_defaults(command=run_evaluate)


def add_export_command(commands) -> None:
    """The ``export`` command and its flags."""
    export = commands.add_parser("export", help="run -> SavedModel (TF Serving) [+ TFLite]")
    add_config_arguments(export)
    export.add_argument("--run-dir", help="training run (default: newest under train.runs_dir)")
    export.add_argument("--tflite", action="store_true", help="also write model.tflite")
    export.add_argument("--quantize", nargs="+", default=None, metavar="MODE",
                        choices=["none", "float16", "dynamic", "int8"],
                        help="TFLite variants to write (implies --tflite): none (float32, "
                             "model.tflite), float16, dynamic, int8 (model_<MODE>.tflite)")
    export.add_argument("--calibration-records", default=None,
                        help="records folder whose training windows calibrate int8 "
                             "(default: data.records of the run)")
    export.add_argument("--calibration-windows", type=int, default=64,
                        help="training windows used to calibrate int8")
    export.add_argument("--eval-windows", type=int, default=256,
                        help="validation windows on which each TFLite variant is scored "
                             "against Keras (0 skips)")
    export.add_argument("--version", type=int, help="version folder (default: next integer)")
    add_config_flag(export, "--model-name", key="export.model_name", help="= export.model_name")
    export.add_argument("--check-audio", default=None,
                        help="folder or file of recordings whose first windows (audio.window_s) "
                             "are used to check that Keras, SavedModel and TFLite agree "
                             "(default: the run's data set)")
    export.set_defaults(command=run_export)


def add_analyze_command(commands) -> None:
    """The ``analyze`` command and its flags (over 60 lines: one declaration per flag, in
    help order, and each flag stands for one ``AnalyzeConfig`` field)."""
    from tfbird.config import ANALYZE_FORMATS, AnalyzeConfig

    analyze_defaults = AnalyzeConfig()  # analyze's flags default to None: these apply.

    analyze = commands.add_parser(
        "analyze", help="recordings -> detections (CSV, Raven, ...)",
        epilog=ANALYZE_EXIT_STATUS, formatter_class=argparse.RawDescriptionHelpFormatter)
    analyze.add_argument("inputs", nargs="+", metavar="INPUT",
                         help="audio files, folders (recursive) or .txt lists of audio "
                              "paths (one per line)")
    analyze.add_argument("--model", required=True,
                         help="run folder, SavedModel export folder or .tflite file")
    add_config_flag(analyze, "--out", key="analyze.out_dir",
                    help=f"output folder (default: {analyze_defaults.out_dir})")
    add_config_flag(analyze, "--format", key="analyze.formats", convert=unique_in_order,
                    dest="formats", nargs="+", choices=ANALYZE_FORMATS,
                    help="outputs per recording: csv (tfbird's: file,start_s,end_s,label,"
                         "confidence), raven, birdnet_csv and kaleidoscope (BirdNET-"
                         "Analyzer's tables, column for column), parquet (needs pyarrow), "
                         "audacity (label track), json (default: "
                         + " ".join(analyze_defaults.formats) + ")")
    add_config_flag(analyze, "--combine", key="analyze.combine", action="store_true",
                    help="also write one table over all recordings per table format "
                         "(OUT/combined.selection.table.txt, ...); csv always has "
                         "OUT/detections.csv")
    add_config_flag(analyze, "--overlap", key="analyze.overlap_s", type=float,
                    help="window overlap (s)")
    add_config_flag(analyze, "--tail", key="analyze.tail",
                    choices=config.TAIL_RULES,
                    help="how a recording's end is covered: end_aligned (one more window "
                         "ending at the end; default) or min_fraction (as the training windows: "
                         "padded windows past the end, as tfbird cv scores clips)")
    add_config_flag(analyze, "--min-conf", key="analyze.min_conf", type=float,
                    help="smallest probability (for classes missing from --thresholds)")
    add_config_flag(analyze, "--thresholds", key="analyze.thresholds", metavar="FILE",
                    help="per-class thresholds: label,threshold CSV such as evaluate's "
                         "thresholds.csv")
    add_config_flag(analyze, "--top-n", key="analyze.top_n", type=int,
                    help="at most N labels per window")
    add_config_flag(analyze, "--merge-consecutive", key="analyze.merge_consecutive",
                    action="store_true", help="one row per call spanning consecutive windows")
    add_config_flag(analyze, "--species-list", key="analyze.species_list",
                    help="text file: only these labels")
    add_config_flag(analyze, "--lat", key="analyze.latitude", type=float,
                    help="with --lon: only species BirdNET's location model expects there "
                         "(labels matched by scientific name; others kept)")
    add_config_flag(analyze, "--lon", key="analyze.longitude", type=float,
                    help="longitude, degrees east")
    add_config_flag(analyze, "--week", key="analyze.week", type=int,
                    help="week of BirdNET's 48-week year (1-48), -1 all year (default)")
    add_config_flag(analyze, "--location-threshold", key="analyze.location_threshold",
                    type=float, help=f"smallest occurrence score kept (default "
                                     f"{analyze_defaults.location_threshold}, BirdNET's)")
    add_config_flag(analyze, "--batch-size", key="analyze.batch_size", type=int,
                    help="windows per inference")
    add_config_flag(analyze, "--jobs", key="analyze.jobs", type=int, help="worker processes")
    add_config_flag(analyze, "--threads-per-job", key="analyze.threads_per_job", type=int,
                    metavar="N", help="threads of each worker process (default: the cores "
                                      "shared evenly among the workers)")
    add_config_flag(analyze, "--dask-scheduler", key="analyze.dask_scheduler",
                    metavar="ADDRESS",
                    help="send the files to this Dask scheduler, e.g. tcp://host:8786 "
                         "(pip install 'tfbird[dask]'; workers must see the same paths)")
    add_config_flag(analyze, "--dask-local", key="analyze.dask_local", type=int, metavar="N",
                    help="send the files to a local Dask cluster of N worker processes")
    add_config_flag(analyze, "--overwrite", key="analyze.overwrite", action="store_true",
                    help="analyse again files whose outputs are up to date")
    analyze.add_argument("--quiet", action="store_true", help="no progress bar")
    analyze.set_defaults(command=run_analyze)


def add_embed_command(commands) -> None:
    """The ``embed`` command and its flags."""
    embed = commands.add_parser(
        "embed", help="recordings -> per-window embeddings of a pretrained backbone (BirdNET: "
                      "CC BY-NC-SA 4.0), to search with `tfbird search`")
    add_config_arguments(embed)
    embed.add_argument("inputs", nargs="+", help="audio files, folders or .txt lists of paths")
    embed.add_argument("--backbone", choices=list(config.EMBEDDING_BACKBONES),
                       help="the embedding model (default: the config's model.backbone, "
                            "else birdnet)")
    embed.add_argument("--out", required=True, help="embeddings folder (resumed if it exists)")
    embed.add_argument("--overlap", type=float, default=0.0,
                       help="overlap of consecutive windows, in seconds (default 0)")
    embed.set_defaults(command=run_embed)


def add_search_command(commands) -> None:
    """The ``search`` command and its flags."""
    search = commands.add_parser(
        "search", help="the windows of an embeddings folder most like a query window")
    search.add_argument("db", help="an embeddings folder from `tfbird embed`")
    search.add_argument("--query", required=True, help="the recording holding the query")
    search.add_argument("--start", type=float, default=0.0,
                        help="start of the query window in it, in seconds (default 0)")
    search.add_argument("--top-k", type=int, default=10, help="hits to list (default 10)")
    search.add_argument("--index", choices=["exact", "hnsw"], default="exact",
                        help="the faiss index DB/index.faiss, built on first use and when "
                             "the parts changed: exact (default; the ranking of comparing "
                             "with every window) or hnsw (approximate; slow to build, fast "
                             "per query). Without faiss: exact search in numpy")
    search.add_argument("--export-clips", metavar="DIR",
                        help="write each hit as a WAV snippet and review.csv (an empty label "
                             "column to fill in) into DIR")
    search.set_defaults(command=run_search)


def add_data_service_command(commands) -> None:
    """The ``data-service`` command and its flags."""
    service = commands.add_parser(
        "data-service", help="run a tf.data service dispatcher or worker for train --data-service")
    role = service.add_mutually_exclusive_group(required=True)
    role.add_argument("--dispatcher", action="store_true", help="run the dispatcher")
    role.add_argument("--worker", metavar="DISPATCHER_HOST:PORT",
                      help="run a worker of this dispatcher")
    service.add_argument("--port", type=int,
                         help="port to listen on (default 5050 dispatcher, 5051 worker)")
    service.add_argument("--host", help="worker: the name trainers reach this machine at "
                                        "(default: its host name)")
    service.set_defaults(command=run_data_service)


def add_bench_command(commands) -> None:
    """The ``bench`` command and its flags."""
    bench = commands.add_parser("bench", help="benchmarks against librosa -> BENCHMARKS.md")
    add_config_arguments(bench)
    bench.add_argument("what", choices=["frontend", "ingest", "analyze", "training", "cv",
                                        "embed"],
                       help="frontend: whole recordings to log-mels; ingest: a data set to "
                            "records; analyze: realtime factor per model form and workers; "
                            "training: reader, train-step examples/s and input wait; cv: "
                            "the cv command's accuracy table beside its baseline; embed: "
                            "a pretrained backbone's realtime factor (--config birdnet)")
    bench.add_argument("--audio", help="frontend, embed: folder of recordings")
    bench.add_argument("--data", nargs="+", help="ingest: folders of recordings (each file's "
                                                 "first folder is its class); analyze: "
                                                 "recordings (files or folders)")
    bench.add_argument("--repeat", type=int, default=1,
                       help="ingest: link every file N times, to time hours of audio (never "
                            "copies)")
    bench.add_argument("--model", nargs="+", help="analyze: run folders, export version "
                                                  "folders (SavedModel + its .tflite files)")
    bench.add_argument("--records", help="training: records folder (default: data.records)")
    bench.add_argument("--fold-column", default="fold", help="cv: the fold column (default fold)")
    bench.add_argument("--folds", nargs="+", help="cv: folds to hold out (default: all)")
    bench.add_argument("--plots", action="store_true",
                       help="analyze: draw the workers plots from the saved results instead")
    bench.add_argument("--results", default="benchmarks/analyze.json",
                       help="analyze: JSON of the measured results (written, or read by --plots)")
    bench.add_argument("--repeats", type=int, default=3, help="timed runs (median is reported)")
    bench.add_argument("--out", default="BENCHMARKS.md", help="Markdown file to update")
    bench.set_defaults(command=run_bench)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help=f"YAML config or preset name: demo, small (real clips, few per "
                             f"class), birdclef (default: {DEFAULT_CONFIG})")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config value, e.g. train.epochs=3")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


LAYOUTS_HELP = ("birdclef (train_metadata.csv + train_audio/), birdclef2025 (train.csv + "
                "taxonomy.csv), cornell (train.csv with ebird_code), folders "
                "(ROOT/<label>/*.wav), raven (Raven selection tables beside the audio), csv "
                "(filename,label)")


def add_layout_arguments(parser: argparse.ArgumentParser) -> None:
    from tfbird.config import DATA_LAYOUTS

    add_config_flag(parser, "--layout", key="data.layout", choices=DATA_LAYOUTS,
                    help="= data.layout (default auto: detected from the files): "
                         + LAYOUTS_HELP)
    add_config_flag(parser, "--label-column", key="data.label_column",
                    help="= data.label_column: label column of Raven selection tables "
                         "(default Species)")


def add_fold_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_flag(parser, "--fold-column", key="data.fold_column",
                    help="= data.fold_column: the data set's fold column (e.g. fold); "
                         "replaces the random split")
    add_config_flag(parser, "--valid-fold", key="data.valid_fold",
                    help="= data.valid_fold: the fold held out for validation")


@dataclasses.dataclass(frozen=True)
class ConfigFlag:
    """A flag that stands for one config value.

    Attributes:
        dest: the flag's ``argparse`` destination (``args.<dest>``).
        key: the config value it sets, ``section.field`` (``analyze.*``: ``AnalyzeConfig``).
        convert: turns the flag's value into the config's (``None``: used as given).
    """

    dest: str
    key: str
    convert: Callable | None = None


CONFIG_FLAGS = "config_flags"  # The args attribute listing a command's ConfigFlags.


def add_config_flag(parser: argparse.ArgumentParser, *names: str, key: str,
                    convert: Callable | None = None, **kwargs) -> None:
    """Adds a flag that stands for the config value ``key``: given, it overrides that value
    (``overrides_from_flags``); left out, it is ``None`` and the config's value stays. A
    ``store_true`` flag counts as given only when set."""
    if kwargs.get("action") == "store_true":
        kwargs.setdefault("default", None)
    action = parser.add_argument(*names, **kwargs)
    known = parser.get_default(CONFIG_FLAGS) or ()
    parser.set_defaults(**{CONFIG_FLAGS: (*known, ConfigFlag(action.dest, key, convert))})


def config_flag_values(args) -> dict[str, object]:
    """``{key: value}`` of the command's config flags that were given, converted."""
    values = {}
    for flag in getattr(args, CONFIG_FLAGS, ()):
        value = getattr(args, flag.dest)
        if value is not None:
            values[flag.key] = value if flag.convert is None else flag.convert(value)
    return values


def overrides_from_flags(args) -> list[str]:
    """``--set`` strings of the config flags given (``--epochs 3`` is ``train.epochs=3``);
    ``load_config`` puts the user's own ``--set`` strings after them, so those win."""
    return set_strings(config_flag_values(args).items())


def unique_in_order(values: list[str]) -> tuple[str, ...]:
    """``--format csv raven csv`` -> ``("csv", "raven")``."""
    return tuple(dict.fromkeys(values))


def set_strings(values) -> list[str]:
    """``--set`` strings ``key=<JSON of value>`` of the ``(key, value)`` pairs whose value
    is not ``None``. JSON quotes strings, so ``--data 2024`` stays the string ``"2024"`` and
    ``--records no`` is not read by YAML as ``false``."""
    return [f"{key}={json.dumps(value)}" for key, value in values if value is not None]


def parse_profile_batch(text: str | None) -> list[int] | None:
    """``--profile-batch START,END`` -> ``[START, END]``; ``None`` stays ``None``."""
    if text is None:
        return None
    parts = text.split(",")
    if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
        raise ValueError(f"--profile-batch must be START,END (two batch numbers, from 1), "
                         f"e.g. 2,4. Received: profile_batch={text!r}")
    return [int(part) for part in parts]


def load_config(args, extra_overrides: list[str] = ()):
    """The command's config: ``--config``, then its config flags (``overrides_from_flags``),
    then ``extra_overrides``, then the user's ``--set`` strings (the last wins)."""
    path = resolve_config_path(args.config)
    if path is None and args.config != DEFAULT_CONFIG:
        path = args.config  # config.load names the missing file.
    # The default config missing (outside the repository): the built-in defaults.
    return config.load(path, [*overrides_from_flags(args), *extra_overrides, *args.overrides])


def resolve_config_path(name: str) -> Path | None:
    """``--config``: a YAML path, or a preset's name (``small`` -> ``configs/small.yaml``,
    looked up in the working folder, then beside the package); ``None`` if neither exists."""
    if Path(name).is_file():
        return Path(name)
    if Path(name).suffix or "/" in name:
        return None
    for configs in (Path("configs"), Path(__file__).resolve().parents[1] / "configs"):
        if (configs / f"{name}.yaml").is_file():
            return configs / f"{name}.yaml"
    return None


def run_synth(args) -> int:
    """``tfbird synth``: the synthetic corpus of the config's ``synth`` section into ``--out``.

    Example: ``python -m tfbird synth --out data/demo``
    """
    from tfbird import synth

    cfg = load_config(args)
    metadata = synth.synthesize_corpus(args.out, cfg.synth, progress=not args.quiet)
    print(f"Synthetic corpus: {metadata}")
    return 0


def run_ingest(args) -> int:
    from tfbird import ingest

    cfg = load_config(args)
    try:
        manifest = ingest.ingest(cfg, args.data, args.out, progress=not args.quiet,
                                 resume=not args.restart, workers=args.workers,
                                 worker_index=args.worker_index,
                                 dask_scheduler=args.dask_scheduler, dask_local=args.dask_local)
    except ingest.TooManyFailures as error:
        print_ingest_summary(error.manifest, args.out)
        raise
    print_ingest_summary(manifest, args.out)
    return 0


def run_eda(args) -> int:
    """``tfbird eda``: a data set's report (PNG charts, ``summary.md``) into ``--out``.

    Example: ``python -m tfbird eda --data data/demo --out eda/demo``
    """
    from tfbird import eda

    cfg = load_config(args)
    summary = eda.run_eda(cfg, args.data, args.out, num_examples=args.examples,
                          progress=not args.quiet)
    print(f"EDA of {summary['recordings']} recordings ({summary['hours']:.2f} h, "
          f"{summary['species']} species) -> {Path(args.out) / eda.SUMMARY_FILE}")
    return 0


def print_ingest_summary(manifest: dict, out_dir) -> None:
    if not manifest.get("complete", True):
        print(f"Worker {manifest['worker_index']} of {manifest['workers']}: wrote "
              f"{manifest['shards_written']} shard(s); {manifest['shards_done']} of "
              f"{manifest['shards_total']} are done. The manifest is written by the run that "
              f"finds them all done.")
        return
    ingested = manifest.get("ingested", {})
    print(f"Ingested {ingested.get('count', '?')} file(s) ({ingested.get('windows', '?')} "
          f"windows); failed {manifest['failures']['count']} of {manifest.get('inputs', '?')}"
          + "".join(f"; {reason}: {n}" for reason, n in
                    manifest["failures"].get("by_reason", {}).items()))
    splits = manifest["splits"]
    counts = ", ".join(f"{name}: {s['recordings']} recordings, {s['examples']} windows"
                       for name, s in splits.items())
    failed = manifest["failures"]["count"]
    print(f"Records in {out_dir}: {counts}; {failed} file(s) failed"
          + (f" (see {Path(out_dir) / manifest['failures']['file']})" if failed else ""))


def run_features(args) -> int:
    """``tfbird features``: the log-mel ``[frames, mels]`` of one whole recording as ``.npy``.

    Example: ``python -m tfbird features recording.flac --out recording.npy``
    """
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
    """``tfbird train``: ingest when the records are missing or stale, train, score the best
    epoch; the flags are config overrides (``--epochs`` is ``--set train.epochs=N``, ...).

    Example: ``python train.py --data my_birds --config small --strategy mirrored``
    """
    from tfbird.catalog import default_records_dir

    records = []
    if args.data is not None and args.records is None:  # Never the config's (the demo's).
        backbone = load_config(args).model.backbone
        records_dir = default_records_dir(args.data, args.valid_fold, backbone=backbone)
        log.info("Records of %s: %s (--records chooses another folder)", args.data, records_dir)
        records = set_strings((("data.records", str(records_dir)),))
    cfg = load_config(args, records)
    from tfbird import pipeline

    run_dir, scores = pipeline.prepare_and_train(
        cfg, data_given=args.data is not None, run_dir=args.run_dir, reingest=args.reingest,
        progress=not args.quiet, overwrite=args.overwrite)
    if not scores:
        print("Worker done; the chief (task index 0) writes the run folder.")
        return 0
    print(f"Run folder: {run_dir}")
    print("Validation: " + json.dumps(scores))
    return 0


def run_cv(args) -> int:
    """``tfbird cv``: train and score one run per held-out fold, beside a baseline.

    Example: ``python -m tfbird cv --data esc10/esc10.csv --fold-column fold``
    """
    from tfbird import cv

    cfg = load_config(args)
    summary = cv.run_cv(cfg, args.data, args.fold_column, folds=args.folds, out_dir=args.out,
                        progress=not args.quiet)
    cv_dir = Path(summary["cv_dir"])
    print((cv_dir / cv.CV_MARKDOWN).read_text().split("\n\nConfusion")[0])
    print(f"Cross-validation in {cv_dir} ({cv.CV_JSON}, {cv.CV_MARKDOWN})")
    return 0


def run_evaluate(args) -> int:
    """``tfbird evaluate``: a run's metrics, per-class table, thresholds and plots on a split
    (with ``--call-onsets``, also where the framewise peaks fall).

    Example: ``python -m tfbird evaluate --run-dir runs/20250101-120000 --split valid``
    """
    from tfbird import evaluation

    summary = evaluation.evaluate_run(args.run_dir, records_dir=args.records, split=args.split,
                                      out_dir=args.out, batch_size=args.batch_size)
    out_dir = summary.pop("out_dir")
    print(f"{args.split}: " + json.dumps(summary))
    print(f"Report, per-class table and thresholds.csv in {out_dir}")
    if args.call_onsets:
        from tfbird import localization

        located = localization.localize_run(args.run_dir, args.call_onsets,
                                            records_dir=args.records, split=args.split,
                                            out_dir=out_dir)
        print(f"Framewise peaks within {located['tolerance_s']} s of a call onset: "
              f"{located['hit_fraction']:.3f} of {located['calls_windows']} (window, species) "
              f"pairs; a random peak: {located['chance_fraction']:.3f}")
    return 0


def run_export(args) -> int:
    """``tfbird export``: a run as a SavedModel version folder (and TFLite variants), then
    checks that Keras, SavedModel and TFLite agree on windows of ``--check-audio``.

    Example: ``python export.py --run-dir runs/20250101-120000 --tflite``
    """
    cfg = load_config(args)
    from tfbird import exporter, pipeline

    run_dir = Path(args.run_dir) if args.run_dir else exporter.newest_run(cfg.train.runs_dir)
    run_cfg = config_of_run(run_dir)
    quantize = tuple(args.quantize or ["none"])
    calibration = None
    if "int8" in quantize:
        records_dir = args.calibration_records or run_cfg.data.records
        calibration, _ = pipeline.record_windows(records_dir, "train", run_cfg.audio,
                                                 limit=args.calibration_windows)
        print(f"int8 calibration: {len(calibration)} training windows from {records_dir}")
    result = exporter.export_run(run_dir, exports_dir=cfg.export.exports_dir,
                                 model_name=cfg.export.model_name,
                                 version=args.version, tflite=args.tflite or bool(args.quantize),
                                 quantize=quantize, calibration_waveforms=calibration)
    print(f"SavedModel: {result.saved_model_dir} ({result.saved_model_bytes / 1e6:.1f} MB, "
          f"inference weights only)")
    for path in result.tflite_paths.values():
        print(f"TFLite: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    check_audio = args.check_audio or run_cfg.data.path
    waveforms = pipeline.check_windows(check_audio, run_cfg.audio, count=8)
    differences = exporter.compare_outputs(result, waveforms)
    print(f"Agreement on {len(waveforms)} {run_cfg.audio.window_s:g}-s windows from {check_audio} "
          f"(largest |p - p_keras|): " + ", ".join(f"{k} {v:.2e}" for k, v in differences.items()))
    if result.tflite_paths and args.eval_windows > 0:
        print_tflite_evaluation(result, run_cfg, args.eval_windows)
    return 0


def print_tflite_evaluation(result, run_cfg, eval_windows: int) -> None:
    """Scores each TFLite variant against Keras on validation windows of the run's records."""
    from tfbird import exporter, pipeline

    try:
        waveforms, targets = pipeline.record_windows(run_cfg.data.records, "valid",
                                                     run_cfg.audio, limit=eval_windows)
    except ValueError as error:
        print(f"TFLite variants not scored on validation windows: {error}")
        return
    table = exporter.evaluate_tflite_variants(result, waveforms, targets)
    print(f"TFLite variants on {len(waveforms)} validation windows of {run_cfg.data.records}:")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))


def run_analyze(args) -> int:
    """``tfbird analyze``: detection tables of recordings by an exported model or run
    folder; exit status 1 when some inputs failed (listed in ``errors.csv``).

    Example: ``python -m tfbird analyze recordings/ --model exports/tfbird/1 --format raven``
    """
    from tfbird import analyze
    from tfbird.config import AnalyzeConfig

    # A flag not given leaves AnalyzeConfig's default, the only one written.
    given = {key.partition(".")[2]: value for key, value in config_flag_values(args).items()}
    cfg = AnalyzeConfig(**given).validate()
    summary = analyze.analyze(args.inputs, args.model, cfg, progress=not args.quiet)
    print(analyze.format_summary(summary))
    return EXIT_SOME_FAILED if summary.failed else 0


def run_embed(args) -> int:
    """``tfbird embed``: per-window embeddings of recordings into a folder ``search`` reads."""
    from tfbird import search

    model_cfg = load_config(args).model
    if args.backbone or model_cfg.backbone not in config.EMBEDDING_BACKBONES:
        model_cfg = dataclasses.replace(model_cfg, backbone=args.backbone or "birdnet")
    counts = search.embed_recordings(args.inputs, model_cfg, args.out, args.overlap,
                                     progress=not args.quiet)
    print(f"Embedded {counts['embedded']} recordings ({counts['windows']} windows) into "
          f"{args.out}; {counts['skipped']} done before, {counts['failed']} failed"
          + (f" (see {Path(args.out) / 'errors.csv'})" if counts["failed"] else ""))
    return 1 if counts["failed"] else 0


def run_search(args) -> int:
    """``tfbird search``: nearest windows to a query, as a table; optionally review clips."""
    from tfbird import search

    hits = search.search(args.db, args.query, args.start, args.top_k, args.index)
    print(hits.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.export_clips:
        print(f"Review clips and their table: {search.export_clips(hits, args.export_clips)}")
    return 0


def run_data_service(args) -> int:
    """``tfbird data-service``: a tf.data service dispatcher or worker, serving until stopped.

    Example: ``python -m tfbird data-service --dispatcher --port 5050``
    """
    import socket

    from tfbird import data_service

    if args.dispatcher:
        port = data_service.DISPATCHER_PORT if args.port is None else args.port
        server = data_service.start_dispatcher(port)
        port = server.target.rsplit(":", 1)[1]  # The port chosen when given 0.
        print(f"tf.data dispatcher on port {port}: train with --data-service "
              f"grpc://{socket.gethostname()}:{port}", flush=True)
    else:
        port = data_service.WORKER_PORT if args.port is None else args.port
        server = data_service.start_worker(args.worker, args.host or socket.gethostname(), port)
        print(f"tf.data worker on port {port} of dispatcher {args.worker}", flush=True)
    server.join()  # Serves until the process is stopped.
    return 0


def run_bench(args) -> int:
    """``tfbird bench WHAT``: one benchmark, its section written into ``--out``
    (``BENCHMARKS.md``).

    Example: ``python -m tfbird bench frontend --audio ../shared/audio --repeats 3``
    """
    from tfbird import bench, pipeline

    if args.what == "analyze":
        return run_bench_analyze(args)
    cfg = load_config(args)
    if args.what == "cv":
        from tfbird import cv

        if not args.data:
            raise ValueError("bench cv needs --data CSV_OR_DIR. Received: data=None")
        summary = cv.run_cv(cfg, args.data[0], args.fold_column, folds=args.folds,
                            progress=not args.quiet)
        section = bench.format_cv_section(summary, "python -m tfbird " + " ".join(sys.argv[1:]),
                                          cfg.model.backbone)
        bench.write_section(Path(args.out), bench.cv_title(cfg.model.backbone), section)
        print(section)
        return 0
    if args.what == "embed":
        if not args.audio:
            raise ValueError("bench embed needs --audio DIR (recordings). Received: audio=None")
        files = pipeline.audio_files(args.audio)
        result = bench.bench_embed(files, cfg.model, args.repeats)
        section = bench.format_embed_section(result, "python -m tfbird " + " ".join(sys.argv[1:]))
        bench.write_section(Path(args.out), bench.EMBED_TITLE, section)
        print(section)
        return 0
    if args.what == "training":
        records_dir = Path(args.records or cfg.data.records)
        result = bench.bench_training(records_dir, cfg, args.repeats)
        section = bench.format_training_section(
            result, "python -m tfbird " + " ".join(sys.argv[1:]))
        bench.write_section(Path(args.out), bench.TRAINING_TITLE, section)
        print(section)
        return 0
    if args.what == "frontend":
        if not args.audio:
            raise ValueError("bench frontend needs --audio DIR. Received: audio=None")
        result = bench.bench_frontend(pipeline.audio_files(args.audio), cfg, args.repeats)
        title, what = "Front end: recording to log-mel", (
            "Decode, resample to 32 kHz and log-mel of each whole recording (librosa.load + "
            "melspectrogram + power_to_db vs tfbird's decode + LogMelSpectrogram), over")
    else:
        if not args.data:
            raise ValueError("bench ingest needs --data DIR... (folders of recordings). "
                             "Received: data=None")
        result = bench.bench_ingest([Path(d) for d in args.data], cfg, args.repeats,
                                    repeat_files=args.repeat)
        section = bench.format_ingest_section(bench.INGEST_TITLE, result,
                                              "python -m tfbird " + " ".join(sys.argv[1:]))
        bench.write_section(Path(args.out), bench.INGEST_TITLE, section)
        print(section)
        return 0
    section = bench.format_section(title, result, what, args.repeats)
    bench.write_section(Path(args.out), title, section)
    print(section)
    return 0


def run_bench_analyze(args) -> int:
    """``tfbird bench analyze``: realtime factor per model form and worker count (saved to
    ``--results``), or with ``--plots`` the scaling plots of saved results.

    Example: ``python -m tfbird bench analyze --data recordings/ --model runs/r exports/tfbird/1``
    """
    from tfbird import bench

    results = Path(args.results)
    if args.plots:
        if not results.is_file():
            raise ValueError(f"No results to plot; run bench analyze first. "
                             f"Received: results={str(results)!r}")
        for path in bench.plot_scaling(json.loads(results.read_text()), results.parent):
            print(f"Plot: {path}")
        return 0
    if not args.data or not args.model:
        raise ValueError("bench analyze needs --data FILES... and --model RUN_OR_EXPORT... "
                         f"Received: data={args.data}, model={args.model}")
    result = bench.bench_analyze(args.data, bench.analysis_models(args.model), args.repeats)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(result, indent=1))
    section = bench.format_analyze_section(result, "python -m tfbird " + " ".join(sys.argv[1:]))
    bench.write_section(Path(args.out), bench.ANALYZE_TITLE, section)
    print(section)
    return 0


def config_of_run(run_dir: Path):
    from tfbird.artifacts import CONFIG_FILE, check_run_dir

    return config.load(check_run_dir(run_dir) / CONFIG_FILE)


if __name__ == "__main__":
    sys.exit(main())
