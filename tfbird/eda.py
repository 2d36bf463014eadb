"""A data set report: what is in it, as PNG charts and a Markdown summary with the numbers.

``run_eda`` reads the catalog (any layout of ``tfbird.catalog``), reads every file's header
with ``soundfile.info`` (duration, sample rate, channels, format) and writes to ``out_dir``:

- ``species.png``: recordings and hours per species, sorted;
- ``durations.png``: histogram of recording durations;
- ``formats.png``: sample rates, channel counts and formats found;
- ``missing.png``: missing values per metadata column;
- ``rating.png`` / ``pitch.png``: their distributions, when the data set has those columns;
- ``cooccurrence.png``: how often each species is a secondary label of each primary one;
- ``logmels.png``: the first window of a few recordings through tfbird's own front end;
- ``eda.md``: the numbers behind every chart.

Example:
    >>> summary = run_eda(config.load("configs/demo.yaml"), "data/demo", "eda/demo")
    >>> summary["species"]
    10
"""

from __future__ import annotations

import collections
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # Files only: no display on a training machine.

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import soundfile
from tqdm.auto import tqdm

from tfbird import catalog, config
from tfbird.waveform import load_waveform, stream_cut_windows

SUMMARY_FILE = "eda.md"
INFO_COLUMNS = ["duration_s", "sample_rate_hz", "channels", "format", "subtype", "info_error"]
MISSING_TEXT = ("", "nan", "none", "null", "not specified")
MAX_COOCCURRENCE_LABELS = 30


def run_eda(cfg: config.Config, data: str | Path, out_dir: str | Path, num_examples: int = 4,
            progress: bool = True) -> dict:
    """Writes the charts and ``eda.md`` for a data set; returns the headline numbers.

    Args:
        cfg: ``data.layout``/``data.label_column`` pick the layout; ``audio`` and
            ``frontend`` give the example log-mels.
        data: a data set folder or CSV (see ``tfbird.catalog``).
        out_dir: report folder (created).
        num_examples: example log-mel images (0 for none).
        progress: progress bar while reading file headers.

    Returns:
        ``{"recordings", "hours", "species", "unreadable", "refused", "files"}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table, labels = catalog.read_catalog(data, cfg.data.layout, cfg.data.label_column,
                                         cfg.data.ignore_labels)
    refused = table[table["error"] != ""]
    table = table[table["error"] == ""].reset_index(drop=True)
    table = pd.concat([table, audio_info(table["path"].tolist(), progress)], axis=1)
    readable = table[table["info_error"] == ""]

    species = species_summary(readable)
    durations = readable["duration_s"].astype(float)
    formats = {"sample rate (Hz)": value_counts(readable["sample_rate_hz"].astype(int)),
               "channels": value_counts(readable["channels"].astype(int)),
               "format": value_counts(readable["format"] + "/" + readable["subtype"])}
    missing = missing_values(table)
    distributions = {column: column_distribution(table[column])
                     for column in ("rating", "pitch") if column in table.columns}
    cooccurrence = cooccurrence_counts(table, labels)

    files = [plot_species(species, out_dir / "species.png"),
             plot_durations(durations, out_dir / "durations.png"),
             plot_formats(formats, out_dir / "formats.png"),
             plot_missing(missing, out_dir / "missing.png")]
    files += [plot_counts(counts, column, out_dir / f"{column}.png")
              for column, counts in distributions.items()]
    files.append(plot_cooccurrence(cooccurrence, out_dir / "cooccurrence.png"))
    examples = example_recordings(readable, num_examples)
    if len(examples):
        files.append(plot_example_logmels(examples, cfg, out_dir / "logmels.png"))

    summary = {"recordings": len(readable), "hours": float(durations.sum() / 3600),
               "species": len(labels), "unreadable": int((table["info_error"] != "").sum()),
               "refused": len(refused), "files": [f.name for f in files]}
    (out_dir / SUMMARY_FILE).write_text(summary_markdown(
        data, summary, species, durations, formats, missing, distributions, cooccurrence,
        table, refused))
    return summary


# --- The numbers ----------------------------------------------------------------------------


def audio_info(paths: list[str], progress: bool = True) -> pd.DataFrame:
    """``soundfile.info`` of each file: ``duration_s, sample_rate_hz, channels, format,
    subtype`` and ``info_error`` (``""`` when readable). MP3 durations are estimates."""
    rows = []
    for path in tqdm(paths, unit="file", desc="soundfile.info",
                     disable=None if progress else True):
        try:
            info = soundfile.info(path)
            rows.append({"duration_s": float(info.duration), "sample_rate_hz": info.samplerate,
                         "channels": info.channels, "format": info.format,
                         "subtype": info.subtype, "info_error": ""})
        except Exception as error:  # libsndfile raises several types; all mean unreadable.
            rows.append({"duration_s": np.nan, "sample_rate_hz": 0, "channels": 0,
                         "format": "", "subtype": "", "info_error": str(error) or "unreadable"})
    return pd.DataFrame(rows, columns=INFO_COLUMNS)


def species_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Recordings and hours per primary label (``"(none)"`` for negatives), most first."""
    labels = table["primary_label"].replace("", "(none)")
    grouped = table.assign(label=labels).groupby("label")["duration_s"]
    summary = pd.DataFrame({"recordings": grouped.size(), "hours": grouped.sum() / 3600})
    return summary.sort_values(["recordings", "hours"], ascending=False)


def value_counts(values: pd.Series) -> pd.Series:
    return values.value_counts().sort_index()


def missing_values(table: pd.DataFrame) -> pd.Series:
    """Missing entries per metadata column (empty, NaN, "nan", "None", "Not specified")."""
    columns = [c for c in table.columns
               if c not in catalog.CATALOG_COLUMNS and c not in INFO_COLUMNS]
    return pd.Series({c: int(is_missing(table[c]).sum()) for c in columns}, dtype=int)


def is_missing(values: pd.Series) -> pd.Series:
    text = values.astype(str).str.strip().str.lower()
    return values.isna() | text.isin(MISSING_TEXT)


def column_distribution(values: pd.Series) -> pd.Series:
    """Counts of each present value: numeric order for numbers (rating), else most first."""
    present = values[~is_missing(values)]
    numeric = pd.to_numeric(present, errors="coerce")
    if len(present) and numeric.notna().all():
        return numeric.value_counts().sort_index()
    return present.astype(str).value_counts()


def cooccurrence_counts(table: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """``[primary, secondary]`` counts of recordings with that secondary label."""
    counts = collections.Counter((p, s) for p, secondary in
                                 zip(table["primary_label"], table["secondary_labels"])
                                 for s in secondary if p)
    matrix = pd.DataFrame(0, index=labels, columns=labels, dtype=int)
    for (primary, secondary), n in counts.items():
        matrix.loc[primary, secondary] = n
    return matrix


def example_recordings(table: pd.DataFrame, count: int) -> pd.DataFrame:
    """Up to ``count`` recordings, one per species first, in species order."""
    if count <= 0 or table.empty:
        return table.iloc[:0]
    ordered = table.sort_values(["primary_label", "filename"])
    first = ordered.drop_duplicates("primary_label")
    return pd.concat([first, ordered.drop(first.index)]).iloc[:count]


# --- The charts -----------------------------------------------------------------------------


def save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def bars(axis, names, values, color: str, horizontal: bool = False) -> None:
    """A bar chart with one bar per name, in the given order (names are text, never numbers)."""
    positions = np.arange(len(names))
    if horizontal:
        axis.barh(positions, np.asarray(values), color=color)
        axis.set_yticks(positions, [str(n) for n in names])
    else:
        axis.bar(positions, np.asarray(values), color=color)
        axis.set_xticks(positions, [str(n) for n in names], rotation=45, ha="right")


def plot_species(species: pd.DataFrame, path: Path) -> Path:
    height = max(3.0, 0.22 * len(species) + 1)
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, height), sharey=True)
    names = species.index[::-1]
    bars(left, names, species["recordings"][::-1], "tab:blue", horizontal=True)
    left.set_xlabel("recordings")
    bars(right, names, species["hours"][::-1], "tab:orange", horizontal=True)
    right.set_xlabel("hours")
    figure.suptitle("Recordings and hours per species (primary label)")
    return save(figure, path)


def plot_durations(durations: pd.Series, path: Path) -> Path:
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.hist(durations.dropna(), bins=min(50, max(5, len(durations) // 2)), color="tab:blue")
    axis.set_xlabel("duration (s)")
    axis.set_ylabel("recordings")
    axis.set_title("Recording durations")
    return save(figure, path)


def plot_formats(formats: dict[str, pd.Series], path: Path) -> Path:
    figure, axes = plt.subplots(1, len(formats), figsize=(4 * len(formats), 4))
    for axis, (name, counts) in zip(axes, formats.items()):
        bars(axis, counts.index, counts.to_numpy(), "tab:green")
        axis.set_title(name)
    axes[0].set_ylabel("recordings")
    return save(figure, path)


def plot_missing(missing: pd.Series, path: Path) -> Path:
    figure, axis = plt.subplots(figsize=(7, max(3.0, 0.3 * len(missing) + 1)))
    bars(axis, missing.index[::-1], missing.to_numpy()[::-1], "tab:red", horizontal=True)
    axis.set_xlabel("missing values")
    axis.set_title("Missing values per metadata column" if len(missing) else
                   "No metadata columns")
    return save(figure, path)


def plot_counts(counts: pd.Series, name: str, path: Path) -> Path:
    figure, axis = plt.subplots(figsize=(7, 4))
    bars(axis, counts.index, counts.to_numpy(), "tab:purple")
    axis.set_xlabel(name)
    axis.set_ylabel("recordings")
    axis.set_title(f"{name} distribution")
    return save(figure, path)


def plot_cooccurrence(matrix: pd.DataFrame, path: Path) -> Path:
    """Heatmap of the ``MAX_COOCCURRENCE_LABELS`` labels with the most co-occurrences."""
    totals = matrix.sum(axis=0) + matrix.sum(axis=1)
    keep = totals.sort_values(ascending=False).index[:MAX_COOCCURRENCE_LABELS]
    keep = sorted(keep)
    shown = matrix.loc[keep, keep]
    size = max(4.0, 0.3 * len(keep) + 2)
    figure, axis = plt.subplots(figsize=(size + 1, size))
    image = axis.imshow(shown.to_numpy(), cmap="viridis")
    axis.set_xticks(range(len(keep)), keep, rotation=90)
    axis.set_yticks(range(len(keep)), keep)
    axis.set_xlabel("secondary label")
    axis.set_ylabel("primary label")
    axis.set_title("Secondary-label co-occurrence (recordings)")
    figure.colorbar(image, ax=axis)
    return save(figure, path)


def plot_example_logmels(examples: pd.DataFrame, cfg: config.Config, path: Path) -> Path:
    """The first window of each example through ``LogMelSpectrogram`` (frames on x)."""
    from tfbird.frontend import build_frontend

    frontend = build_frontend(cfg.audio, cfg.frontend)
    figure, axes = plt.subplots(len(examples), 1, figsize=(8, 2.4 * len(examples)),
                                squeeze=False)
    for axis, row in zip(axes[:, 0], examples.itertuples()):
        waveform = load_waveform(row.path, cfg.audio.sample_rate_hz)
        windows, _ = next(stream_cut_windows([waveform], cfg.audio))
        logmel = frontend(windows[:1])[0].numpy()
        axis.imshow(logmel.T, origin="lower", aspect="auto", cmap="magma",
                    extent=[0, cfg.audio.window_s, 0, cfg.frontend.n_mels])
        axis.set_title(f"{row.primary_label or '(none)'}: {row.filename}", fontsize=9)
        axis.set_ylabel("mel band")
    axes[-1, 0].set_xlabel("time (s)")
    return save(figure, path)


# --- The Markdown summary -------------------------------------------------------------------


def markdown_table(frame: pd.DataFrame | pd.Series, header: list[str]) -> str:
    """A Markdown table of a Series (index, value) or a DataFrame (index, columns)."""
    if isinstance(frame, pd.Series):
        frame = frame.to_frame()
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, *values in frame.itertuples():
        cells = [f"{v:,.3f}" if isinstance(v, (float, np.floating)) else str(v) for v in values]
        lines.append("| " + " | ".join([str(index), *cells]) + " |")
    return "\n".join(lines)


def summary_markdown(data, summary: dict, species: pd.DataFrame, durations: pd.Series,
                     formats: dict, missing: pd.Series, distributions: dict,
                     cooccurrence: pd.DataFrame, table: pd.DataFrame,
                     refused: pd.DataFrame) -> str:
    stats = durations.describe()
    pairs = cooccurrence.stack()
    pairs = pairs[pairs > 0].sort_values(ascending=False)[:15]
    parts = [
        f"# Data set report: {data}",
        (f"{summary['recordings']} readable recordings, {summary['hours']:.2f} h, "
         f"{summary['species']} species. {summary['unreadable']} file(s) unreadable by "
         f"soundfile.info; {summary['refused']} refused by the catalog (path outside the data "
         f"root, unknown label, missing audio)."),
        "## Recordings and hours per species\n\n![species](species.png)\n\n"
        + markdown_table(species, ["species", "recordings", "hours"]),
        "## Durations\n\n![durations](durations.png)\n\n"
        + markdown_table(stats.rename(index=lambda k: f"{k} (s)" if k != "count" else k),
                         ["statistic", "value"]),
        "## Sample rates, channels, formats\n\n![formats](formats.png)\n\n"
        + "\n\n".join(markdown_table(counts, [name, "recordings"])
                      for name, counts in formats.items()),
        "## Missing values per metadata column\n\n![missing](missing.png)\n\n"
        + (markdown_table(missing, ["column", "missing"]) if len(missing) else
           "The data set has no metadata columns."),
    ]
    for column, counts in distributions.items():
        parts.append(f"## {column.capitalize()}\n\n![{column}]({column}.png)\n\n"
                     + markdown_table(counts, [column, "recordings"]))
    parts.append("## Secondary-label co-occurrence\n\n![cooccurrence](cooccurrence.png)\n\n"
                 + (markdown_table(pd.Series(pairs.to_numpy(), index=[
                     f"{primary} + {secondary}" for primary, secondary in pairs.index]),
                                   ["primary + secondary", "recordings"]) if len(pairs) else
                    "No recording has a secondary label that is a class."))
    if "logmels.png" in summary["files"]:
        parts.append("## Example log-mels (first window)\n\n![logmels](logmels.png)")
    problems = pd.concat([
        refused[["filename", "error"]],
        table.loc[table["info_error"] != "", ["filename", "info_error"]].rename(
            columns={"info_error": "error"})])
    if len(problems):
        parts.append("## Files that cannot be used\n\n" + markdown_table(
            problems.set_index("filename"), ["filename", "reason"]))
    return "\n\n".join(parts) + "\n"
