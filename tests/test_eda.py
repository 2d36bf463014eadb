"""The data set report: charts are written and ``eda.md`` holds the numbers behind them."""

import pandas as pd
from conftest import tiny_config
from test_layouts import SMALL, write_cornell

from tfbird import cli, eda

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def cornell_with_a_broken_file(root):
    root = write_cornell(root)
    table = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    broken = table.iloc[[2]].assign(filename="XC4.wav", rating="4.0", pitch="Level")
    pd.concat([table, broken]).to_csv(root / "train.csv", index=False)
    (root / "train_audio" / "amecro" / "XC4.wav").write_text("not audio")
    return root


def test_eda_writes_charts_and_the_numbers(tmp_path):
    root = cornell_with_a_broken_file(tmp_path / "cornell")
    cfg = tiny_config(tmp_path, **SMALL)
    summary = eda.run_eda(cfg, root, tmp_path / "eda", num_examples=2, progress=False)

    assert summary["recordings"] == 3 and summary["unreadable"] == 1
    assert abs(summary["hours"] - 6.0 / 3600) < 1e-6 and summary["species"] == 3
    assert summary["files"] == ["species.png", "durations.png", "formats.png", "missing.png",
                                "rating.png", "pitch.png", "cooccurrence.png", "logmels.png"]
    for name in summary["files"]:
        assert (tmp_path / "eda" / name).read_bytes().startswith(PNG_MAGIC), name

    report = (tmp_path / "eda" / eda.SUMMARY_FILE).read_text()
    for line in [
        "3 readable recordings, 0.00 h, 3 species. 1 file(s) unreadable",
        "| wilfly | 1 | 0.001 |",          # 3 s
        "| aldfly | 1 | 0.001 |",          # 2 s
        "| max (s) | 3.000 |", "| min (s) | 1.000 |",
        "| 8000 | 3 |", "| WAV/PCM_16 | 3 |",
        "| rating | 1 |",                  # XC3 has no rating
        "| pitch | 1 |",                   # "Not specified"
        "| 3.5 | 1 |", "| 4.0 | 2 |",      # rating distribution (the broken file has 4.0)
        "| Level | 2 |", "| Both | 1 |",   # pitch distribution
        "| aldfly + wilfly | 1 |", "| wilfly + aldfly | 1 |",
        "| XC4.wav |",
    ]:
        assert line in report, line


def test_eda_command(tmp_path, capsys):
    root = write_cornell(tmp_path / "cornell")
    config_path = tmp_path / "small.yaml"
    config_path.write_text(str(SMALL).replace("'", '"'))
    assert cli.main(["eda", "--config", str(config_path), "--data", str(root), "--out",
                     str(tmp_path / "eda"), "--examples", "1", "--quiet"]) == 0
    assert "EDA of 3 recordings (0.00 h, 3 species)" in capsys.readouterr().out
    assert (tmp_path / "eda" / "logmels.png").is_file()
