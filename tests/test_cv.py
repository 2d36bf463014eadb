"""Predefined folds (``data.fold_column``), the ``cv`` command and its baseline, and where
``train --data`` puts a data set's records."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_config
from test_layouts import SMALL, write_tone

from tfbird import catalog, cli, config, cv, ingest

SR = SMALL["audio"]["sample_rate_hz"]


def write_fold_csv(root, folds=(1, 2), per_class_and_fold=2, short_s=None):
    """Two classes of tones (400 Hz and 2 kHz, easy to tell apart) in class folders, and a
    ``clips.csv`` ``filename,label,fold`` beside them. ``short_s``: the first clip's length."""
    rows = []
    for label, frequency_hz in (("low", 400.0), ("high", 2000.0)):
        for fold in folds:
            for k in range(per_class_and_fold):
                name = f"{label}/{fold}-{k}.wav"
                seconds = short_s if short_s and not rows else 1.0 + 0.1 * k
                write_tone(root / name, seconds, frequency_hz=frequency_hz * (1 + 0.05 * k))
                rows.append({"filename": name, "label": label, "fold": fold})
    pd.DataFrame(rows).to_csv(root / "clips.csv", index=False)
    return root / "clips.csv"


def fold_config(tmp_path, **data):
    return tiny_config(tmp_path, **SMALL, data={"synthetic": False, **data},
                       model={"image_size": [32, 32], "task": "multiclass"},
                       train={"epochs": 1, "global_batch_size": 2, "warmup_epochs": 0.0,
                              "runs_dir": str(tmp_path / "runs")})


def test_fold_column_splits_by_the_valid_fold_of_a_csv(tmp_path):
    csv_path = write_fold_csv(tmp_path / "data", folds=(1, 2, 3))
    cfg = fold_config(tmp_path, fold_column="fold", valid_fold=2)
    manifest = ingest.ingest(cfg, csv_path, tmp_path / "records", progress=False)
    ingested = pd.read_csv(tmp_path / "records" / "ingested.csv")
    valid = sorted(ingested.loc[ingested["split"] == "valid", "filename"])
    assert valid == ["high/2-0.wav", "high/2-1.wav", "low/2-0.wav", "low/2-1.wav"]
    assert manifest["splits"]["train"]["recordings"] == 8
    assert manifest["split"] == {"fold_column": "fold", "valid_fold": "2",
                                 "by": "the data set's folds"}


def test_folders_take_their_folds_from_the_csv_beside_them(tmp_path):
    write_fold_csv(tmp_path / "data")
    table, _ = catalog.read_catalog(tmp_path / "data", "folders", fold_column="fold")
    split = catalog.assign_split(table, 0.2, 0, fold_column="fold", valid_fold="1")
    assert dict(zip(split["filename"], split["split"])) == {
        "high/1-0.wav": "valid", "high/1-1.wav": "valid", "high/2-0.wav": "train",
        "high/2-1.wav": "train", "low/1-0.wav": "valid", "low/1-1.wav": "valid",
        "low/2-0.wav": "train", "low/2-1.wav": "train"}


def test_an_unknown_fold_or_column_is_refused_with_the_folds_named(tmp_path):
    table, _ = catalog.read_catalog(write_fold_csv(tmp_path / "data", folds=(1, 2, 10)))
    assert catalog.folds_of(table, "fold") == ["1", "2", "10"]  # numeric order
    with pytest.raises(ValueError, match=r"\['1', '2', '10'\].*valid_fold='7'"):
        catalog.assign_split(table, 0.2, 0, fold_column="fold", valid_fold="7")
    with pytest.raises(ValueError, match="valid_fold=None"):
        catalog.assign_split(table, 0.2, 0, fold_column="fold")
    with pytest.raises(ValueError, match="no fold column 'split'"):
        catalog.assign_split(table, 0.2, 0, fold_column="split", valid_fold="1")
    with pytest.raises(ValueError, match="data.valid_fold"):
        config.load(None, ["data.valid_fold=3"])  # a fold needs its column


def test_cli_refuses_an_unknown_fold(tmp_path, capsys):
    csv_path = write_fold_csv(tmp_path / "data")
    status = cli.main(["ingest", "--data", str(csv_path), "--out", str(tmp_path / "r"),
                       "--fold-column", "fold", "--valid-fold", "9", "--quiet"])
    assert status == 2
    assert "valid_fold='9'" in capsys.readouterr().err


def test_own_data_records_are_named_after_the_data_set_never_the_demo():
    assert catalog.default_records_dir("../shared/data/esc10/esc10.csv") == \
        Path("records/esc10")
    assert catalog.default_records_dir("/data/birdclef-2024/train_metadata.csv", 3) == \
        Path("records/birdclef-2024-fold3")
    assert catalog.default_records_dir("/data/my_birds/") == Path("records/my_birds")
    assert catalog.default_records_dir("/data/my_birds/", backbone="birdnet") == Path(
        "records/my_birds-birdnet")


def test_train_with_data_writes_records_beside_not_into_the_demo(tmp_path, monkeypatch):
    csv_path = write_fold_csv(tmp_path / "mybirds")
    cfg = fold_config(tmp_path)
    config.save(cfg, tmp_path / "cfg.yaml")
    monkeypatch.chdir(tmp_path)
    status = cli.main(["train", "--config", str(tmp_path / "cfg.yaml"), "--data", str(csv_path),
                       "--fold-column", "fold", "--valid-fold", "2",
                       "--run-dir", str(tmp_path / "run"), "--quiet"])
    assert status == 0
    assert (tmp_path / "records" / "clips-fold2" / "manifest.json").is_file()
    assert not (tmp_path / "records" / "demo").exists()
    manifest = ingest.read_manifest(tmp_path / "records" / "clips-fold2")
    assert manifest["split"]["valid_fold"] == "2"


def test_cv_scores_each_fold_beside_the_baseline_and_resumes(tmp_path, monkeypatch):
    # A 0.4-s clip (shorter than the 1-s window) is zero-padded and counts once.
    csv_path = write_fold_csv(tmp_path / "data", per_class_and_fold=3, short_s=0.4)
    monkeypatch.chdir(tmp_path)  # records/<name>-fold<K> land here
    cfg = fold_config(tmp_path)
    summary = cv.run_cv(cfg, csv_path, "fold", progress=False)
    cv_dir = Path(summary["cv_dir"])
    saved = json.loads((cv_dir / "cv.json").read_text())
    assert saved["folds"] == ["1", "2"]
    for fold in saved["per_fold"]:
        assert fold["recordings"] == 6
        assert np.sum(fold["confusion_matrix"]) == 6
        assert 0.0 <= fold["model"]["top1_accuracy"] <= 1.0
        # Tones of 400 Hz and 2 kHz: the log-mel statistics separate them (the zero-padded
        # 0.4-s clip may be the one miss).
        assert fold["baseline"]["top1_accuracy"] >= 0.83  # 5 of 6, rounded to 4 places
        assert fold["baseline"]["macro_roc_auc"] >= 0.8
        assert fold["minutes"] > 0
        export = cv_dir / f"fold-{fold['fold']}" / "export" / "model" / "1"
        assert (export / "saved_model.pb").is_file()
    accuracies = [fold["baseline"]["top1_accuracy"] for fold in saved["per_fold"]]
    assert saved["baseline"]["top1_accuracy"]["mean"] == pytest.approx(np.mean(accuracies),
                                                                       abs=1e-4)
    assert "| **mean ± std** |" in (cv_dir / "cv.md").read_text()
    manifest = ingest.read_manifest(tmp_path / "records" / "clips-fold1")
    assert manifest["ingested"]["count"] == 12  # the short clip too
    assert manifest["splits"]["valid"]["examples"] == 6  # one window per clip

    # The same command again: the finished folds are reused, nothing is trained.
    stamp = (cv_dir / "fold-1" / "score.json").stat().st_mtime_ns
    shutil.rmtree(cv_dir / "fold-2")
    # As the cv command gives it (its --fold-column is in the config; bench cv's is not).
    with_flags = fold_config(tmp_path, fold_column="fold", path=str(csv_path))
    again = cv.run_cv(with_flags, csv_path, "fold", progress=False)
    assert again["cv_dir"] == summary["cv_dir"]
    assert (cv_dir / "fold-1" / "score.json").stat().st_mtime_ns == stamp
    assert (cv_dir / "fold-2" / "score.json").is_file()
    # Killed after training, before the score: the trained model is reused, not retrained.
    model_stamp = (cv_dir / "fold-2" / "model.keras").stat().st_mtime_ns
    (cv_dir / "fold-2" / "score.json").unlink()
    cv.run_cv(cfg, csv_path, "fold", progress=False)
    assert (cv_dir / "fold-2" / "model.keras").stat().st_mtime_ns == model_stamp
    assert (cv_dir / "fold-2" / "score.json").is_file()
    with pytest.raises(ValueError, match=r"folds=\['3'\]"):
        cv.run_cv(cfg, csv_path, "fold", folds=["3"], progress=False)


def test_baseline_fits_mean_and_std_of_the_records_logmels(tmp_path):
    csv_path = write_fold_csv(tmp_path / "data")
    cfg = fold_config(tmp_path, fold_column="fold", valid_fold=1)
    ingest.ingest(cfg, csv_path, tmp_path / "records", progress=False)
    names, features, targets = cv.clip_features(tmp_path / "records", "valid")
    assert sorted(names) == ["high/1-0.wav", "high/1-1.wav", "low/1-0.wav", "low/1-1.wav"]
    assert features.shape == (4, 2 * SMALL["frontend"]["n_mels"])
    assert targets.sum(1).tolist() == [1.0] * 4


def test_model_selection_last_keeps_no_best_checkpoint(tmp_path):
    import keras

    from tfbird import training

    def checkpoints(selection):
        callbacks = training.training_callbacks(
            tmp_path, config.TrainConfig(model_selection=selection))
        return sorted(Path(c.filepath).name for c in callbacks
                      if isinstance(c, keras.callbacks.ModelCheckpoint))

    assert checkpoints("best") == ["last.keras", "model.keras"]
    assert checkpoints("last") == ["last.keras"]  # train() saves model.keras at the end
    with pytest.raises(ValueError, match="train.model_selection"):
        config.load(None, ["train.model_selection=median"])


def test_config_presets_are_found_by_name():
    assert cli.resolve_config_path("small").name == "small.yaml"
    cfg = config.load(cli.resolve_config_path("small"))
    assert (cfg.model.task, cfg.train.model_selection) == ("multiclass", "last")
    assert cli.resolve_config_path("no-such-preset") is None
