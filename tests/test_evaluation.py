"""``tfbird evaluate``: metrics, per-class table, thresholds and plots of a run on a split."""

import csv
import json

import numpy as np
import pandas as pd
import pytest

from tfbird import artifacts, cli, evaluation, ingest, training

LABELS = ["a", "b", "c", "d", "e", "f"]


def hand_made_scores():
    """Six classes with known rankings; class f has no positives."""
    y_true = np.zeros((6, 6))
    y_score = np.full((6, 6), 0.05)
    for k in range(5):
        y_true[k, k] = y_true[(k + 1) % 6, k] = 1  # two positives per class
        y_score[k, k] = 0.9  # the first positive always ranks first
        y_score[(k + 1) % 6, k] = 0.5 - 0.1 * k  # the second sinks as k grows
        y_score[(k + 2) % 6, k] = 0.45  # one negative in between
    return y_true, y_score


def test_report_on_known_scores(tmp_path):
    y_true, y_score = hand_made_scores()
    summary = evaluation.write_report(y_true, y_score, LABELS, tmp_path)

    table = pd.read_csv(tmp_path / evaluation.PER_CLASS_FILE)
    assert list(table["label"]) == LABELS and list(table["support"]) == [2] * 5 + [0]
    # Class a: positives 0.9 and 0.5 above the negative 0.45: AP 1, ROC-AUC 1.
    assert table.loc[0, "ap"] == pytest.approx(1.0) and table.loc[0, "roc_auc"] == 1.0
    # Classes b..e: the second positive (0.4 .. 0.1) ranks after the negative 0.45:
    # AP (1 + 2/3) / 2; ROC-AUC: it beats the 3 negatives at 0.05 of 4 -> (4 + 3) / 8.
    np.testing.assert_allclose(table.loc[1:4, "ap"], (1 + 2 / 3) / 2)
    np.testing.assert_allclose(table.loc[1:4, "roc_auc"], 7 / 8)
    # Best F1: a at 0.5 (both positives, no negative: F1 1); b..e at their second positive
    # (both positives and the negative: P 2/3, R 1, F1 4/5, better than 2/3 at 0.9).
    assert table.loc[0, "threshold"] == pytest.approx(0.5) and table.loc[0, "best_f1"] == 1.0
    np.testing.assert_allclose(table.loc[1:4, "threshold"], [0.4, 0.3, 0.2, 0.1])
    np.testing.assert_allclose(table.loc[1:4, "best_f1"], 0.8)
    assert np.isnan(table.loc[5, "ap"]) and table.loc[5, "threshold"] == 0.5

    thresholds = artifacts.read_thresholds(tmp_path / evaluation.THRESHOLDS_FILE)
    assert list(thresholds) == LABELS
    assert thresholds == pytest.approx(dict(zip(LABELS, table["threshold"])))
    written = json.loads((tmp_path / evaluation.METRICS_FILE).read_text())
    assert written == pytest.approx(summary)
    assert summary["examples"] == 6
    assert summary["macro_roc_auc"] == pytest.approx((1 + 4 * 7 / 8) / 5)
    # Rows at 0.5 predict {a}, {a,b}, {c}, {d}, {e}, {} against {a}, {a,b}, {b,c}, {c,d},
    # {d,e}, {e}; at the tuned thresholds {a,e}, {a,b}, {b,c}, {b,c,d}, {c,d,e}, {d,e}.
    assert summary["row_f1"] == pytest.approx((1 + 1 + 3 * 2 / 3 + 0) / 6)
    assert summary["row_f1_tuned"] == pytest.approx((2 / 3 + 1 + 1 + 0.8 + 0.8 + 2 / 3) / 6)

    worst = evaluation.worst_classes(table)
    assert len(worst) == 5 and "f" not in set(worst["label"])  # no positives: no PR curve
    for name in (evaluation.PR_CURVES_FILE, evaluation.HISTOGRAM_FILE):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / name).stat().st_size > 10_000


def test_evaluate_command_scores_a_trained_run(trained_run, tiny_records, tmp_path, capsys):
    out = tmp_path / "report"
    assert cli.main(["evaluate", "--run-dir", str(trained_run), "--out", str(out)]) == 0
    assert "Report, per-class table and thresholds.csv in" in capsys.readouterr().out
    scores = json.loads((out / evaluation.METRICS_FILE).read_text())
    trained = json.loads((trained_run / training.METRICS_FILE).read_text())
    for key in ("macro_roc_auc", "padded_cmap", "row_f1", "examples"):
        assert scores[key] == pytest.approx(trained[key], abs=1e-6)  # same model, same split
    assert pd.read_csv(out / evaluation.THRESHOLDS_FILE)["label"].tolist() == ["sp00", "sp01"]

    train_split = evaluation.evaluate_run(trained_run, tiny_records, split="train")
    manifest = ingest.read_manifest(tiny_records)
    assert train_split["examples"] == manifest["splits"]["train"]["examples"]
    assert (trained_run / "evaluation" / "train" / evaluation.PER_CLASS_FILE).is_file()
    assert cli.main(["evaluate", "--run-dir", str(tmp_path)]) == 2  # not a run


def test_multiclass_report_has_top1_accuracy_and_a_confusion_matrix(tmp_path):
    y_true = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]])
    y_score = np.array([[.7, .2, .1], [.3, .6, .1], [.2, .7, .1], [.5, .1, .4], [.4, .3, .3]])
    summary = evaluation.write_report(y_true, y_score, ["a", "b", "c"], tmp_path,
                                      task="multiclass")
    assert summary["top1_accuracy"] == pytest.approx(2 / 4)  # the window without a class: out
    matrix = pd.read_csv(tmp_path / evaluation.CONFUSION_CSV_FILE, index_col="true")
    assert matrix.to_numpy().tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
    assert list(matrix.columns) == ["a", "b", "c"]
    assert (tmp_path / evaluation.CONFUSION_PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = json.loads((tmp_path / evaluation.METRICS_FILE).read_text())
    assert written["top1_accuracy"] == pytest.approx(0.5)
    multilabel = evaluation.write_report(y_true, y_score, ["a", "b", "c"], tmp_path / "ml")
    assert "top1_accuracy" not in multilabel
    assert not (tmp_path / "ml" / evaluation.CONFUSION_CSV_FILE).exists()


@pytest.mark.slow  # Trains ResNet50 twice (frozen, then all), evaluates, exports: minutes.
def test_multiclass_run_trains_evaluates_and_exports_a_softmax(tiny_config_file, tiny_records,
                                                               tmp_path):
    from tfbird import exporter

    run_dir = tmp_path / "run"
    assert cli.main(["train", "--config", str(tiny_config_file), "--run-dir", str(run_dir),
                     "--quiet", "--epochs", "2", "--set", "model.task=multiclass",
                     "--set", "train.label_smoothing=0.1",
                     "--set", "train.freeze_backbone_epochs=1"]) == 0
    scores = json.loads((run_dir / training.METRICS_FILE).read_text())
    assert 0.0 <= scores["top1_accuracy"] <= 1.0
    with (run_dir / training.TRAINING_LOG_FILE).open() as stream:
        assert [row["epoch"] for row in csv.DictReader(stream)] == ["0", "1"]

    out = tmp_path / "report"
    assert cli.main(["evaluate", "--run-dir", str(run_dir), "--out", str(out)]) == 0
    report = json.loads((out / evaluation.METRICS_FILE).read_text())
    assert report["top1_accuracy"] == pytest.approx(scores["top1_accuracy"], abs=1e-6)
    matrix = pd.read_csv(out / evaluation.CONFUSION_CSV_FILE, index_col="true")
    valid_examples = ingest.read_manifest(tiny_records)["splits"]["valid"]["examples"]
    assert matrix.to_numpy().sum() == valid_examples  # every window has a primary label

    result = exporter.export_run(run_dir, exports_dir=tmp_path / "exports")
    waveforms = np.random.default_rng(0).normal(0, 0.1, (3, 160000)).astype("float32")
    probabilities = exporter.run_saved_model(result.saved_model_dir, waveforms)
    assert probabilities.shape == (3, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
