"""Benchmark plumbing: BENCHMARKS.md sections are replaced, not duplicated."""

import numpy as np
import PIL.Image
import pytest
import soundfile
from conftest import tiny_config

from tfbird import bench, config


def test_write_section_replaces_only_its_own_section(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    bench.write_section(path, "A", "## A\n\nfirst\n")
    bench.write_section(path, "B", "## B\n\nother\n")
    bench.write_section(path, "A", "## A\n\nsecond\n")
    text = path.read_text()
    assert text.startswith("# Benchmarks")
    assert text.count("## A") == 1 and "second" in text and "first" not in text
    assert "## B\n\nother" in text


def test_format_section_reports_the_ratio():
    result = {"files": 2, "audio_s": 3600.0, "librosa_s": 30.0, "tfbird_s": 10.0}
    section = bench.format_section("Front end", result, "Work on", repeats=3)
    assert "**tfbird is 3.00x librosa**" in section
    assert "| tfbird | 10.00 | 360x |" in section and "1.00 h of audio" in section


def test_link_corpus_links_every_file_repeat_times_under_its_class(tmp_path):
    source = tmp_path / "esc"
    for name in ["dog/a.wav", "dog/b.ogg", "rain/c.flac", "top.mp3", "notes.txt"]:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(b"x")
    links = bench.link_corpus([source], tmp_path / "corpus", repeat=3)
    assert len(links) == 3 * 4 and all(link.is_symlink() for link in links)
    assert sorted({link.parent.name for link in links}) == ["dog", "esc", "rain"]
    assert (tmp_path / "corpus" / "dog" / "002-dog__b.ogg").resolve() == source / "dog" / "b.ogg"


def test_format_ingest_section_gives_the_ratios_of_whole_processes():
    seconds = {"tfbird": 20.0, "librosa": 60.0, "floor_1": 20.0, "floor_2": 10.0,
               "tfbird_1core": 40.0, "librosa_1core": 60.0}
    result = {"files": 10, "audio_s": 36000.0, "repeats": 3, "seconds": seconds}
    section = bench.format_ingest_section("Ingest", result, "python -m tfbird bench ingest")
    assert "**tfbird is 3.00x librosa** (one process) and runs at 50% of the 2-core" in section
    assert "| `tfbird ingest`, 2 cores (a decode worker process per core) | 20.0 | 1800x |" in section
    assert "On 1 core: 1.50x librosa." in section and "10.0 h of audio" in section
    assert "--dask-local 2" not in section
    section = bench.format_ingest_section("Ingest", {**result, "seconds": {
        **seconds, "dask_local_2": 25.0}}, "python -m tfbird bench ingest")
    assert "| `tfbird ingest --dask-local 2` (2 Dask workers), 2 cores | 25.0 | 1440x |" in section
    assert "With `--dask-local 2`: 2.40x librosa, 0.80x the single-process ingest." in section
    assert "decode workers make" not in section
    section = bench.format_ingest_section("Ingest", {**result, "seconds": {
        **seconds, "tfbird_in_process": 30.0}}, "python -m tfbird bench ingest")
    assert "The decode workers make ingest 1.50x as fast as decoding in its own process." in section


def test_ingest_commands_time_dask_local_2_as_the_same_command_plus_the_option(tmp_path):
    pytest.importorskip("distributed", reason="the Dask row needs 'tfbird[dask]'")
    commands = bench.ingest_commands(tmp_path / "corpus", tmp_path / "files.txt",
                                     tmp_path / "records", tmp_path / "cfg.yaml", config.Config())
    assert commands["dask_local_2"] == [*commands["tfbird"], "--dask-local", "2"]
    assert commands["tfbird_in_process"] == [*commands["tfbird"], "--set", "data.decode_workers=0"]
    assert commands["tfbird"][2:5] == ["tfbird", "ingest", "--quiet"]


FAKE_ANALYSIS = {"files": 3, "audio_s": 7200.0, "scaling_model": "keras",
                 "models": [{"name": "keras", "seconds": 60.0},
                            {"name": "tflite_int8", "seconds": 24.0}],
                 "scaling": [{"mode": "jobs", "workers": 1, "seconds": 60.0},
                             {"mode": "jobs", "workers": 2, "seconds": 32.0},
                             {"mode": "dask-local", "workers": 2, "seconds": 40.0}]}


def test_scaling_table_gives_speedup_and_efficiency_against_one_job():
    table = bench.scaling_table(FAKE_ANALYSIS)
    assert table["mode"].tolist() == ["jobs", "jobs", "dask-local"]
    np.testing.assert_allclose(table["speedup"], [1.0, 1.875, 1.5])
    np.testing.assert_allclose(table["efficiency"], [1.0, 0.9375, 0.75])
    with pytest.raises(ValueError, match="exactly one 'jobs' run with 1 worker"):
        bench.scaling_table({"scaling": FAKE_ANALYSIS["scaling"][1:]})


def test_analyze_section_reports_realtime_factors_and_scaling():
    section = bench.format_analyze_section(FAKE_ANALYSIS, "python -m tfbird bench analyze")
    assert section.startswith(f"## {bench.ANALYZE_TITLE}\n")
    assert "3 files, 2.00 h of audio" in section
    assert "| keras | 60.00 | 120x |" in section and "| tflite_int8 | 24.00 | 300x |" in section
    assert "| `jobs 2` | 32.00 | 1.88x | 94% |" in section
    assert "| `dask-local 2` | 40.00 | 1.50x | 75% |" in section
    assert "TensorFlow's threads" not in section  # one_process_seconds not measured
    section = bench.format_analyze_section({**FAKE_ANALYSIS, "one_process_seconds": 40.0},
                                           "python -m tfbird bench analyze")
    assert "cores: 40.00 s, 1.50x one single-thread worker." in section
    scaling_jobs_2_first = [FAKE_ANALYSIS["scaling"][i] for i in (1, 0, 2)]
    section = bench.format_analyze_section(
        {**FAKE_ANALYSIS, "scaling": scaling_jobs_2_first, "one_process_seconds": 40.0},
        "python -m tfbird bench analyze")
    assert "cores: 40.00 s, 1.50x one single-thread worker." in section


def test_scaling_plots_are_three_pngs(tmp_path):
    paths = bench.plot_scaling(FAKE_ANALYSIS, tmp_path)
    assert [p.name for p in paths] == list(bench.SCALING_PLOTS)
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = PIL.Image.open(path).size
        assert (width, height) == (360, 256)  # 4.5 x 3.2 inches at 80 dpi


def test_analysis_models_lists_each_model_form(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.keras").write_bytes(b"x")
    export = tmp_path / "exports" / "1"
    export.mkdir(parents=True)
    for name in ["saved_model.pb", "model.tflite", "model_int8.tflite"]:
        (export / name).write_bytes(b"x")
    models = bench.analysis_models([tmp_path / "run", export])
    assert [name for name, _ in models] == ["keras", "saved_model", "tflite_none", "tflite_int8"]
    with pytest.raises(ValueError, match="Received: model="):
        bench.analysis_models([tmp_path])


def test_training_section_reports_rates_against_gap_float32():
    result = {"reader": {"reader, no augmentation": 3000.0, "reader + augmentation": 2600.0},
              "steps": {"gap": 20.0, "sed": 15.0, "gap, XLA (jit_compile)": 30.0},
              "input_wait_share": 0.0123, "batch_size": 32, "repeats": 3,
              "logmel_shape": (501, 128), "image_size": (64, 64)}
    section = bench.format_training_section(result, "python -m tfbird bench training")
    assert section.startswith(f"## {bench.TRAINING_TITLE}\n")
    assert "| reader + augmentation | 2600 |" in section
    assert "| sed | 15.0 | 0.75x |" in section
    assert "| gap, XLA (jit_compile) | 30.0 | 1.50x |" in section
    assert "**1.230%**" in section


def test_training_bench_measures_the_reader_steps_and_input_wait(tiny_cfg, tiny_records):
    import dataclasses

    cfg = dataclasses.replace(tiny_cfg, train=dataclasses.replace(tiny_cfg.train,
                                                                  global_batch_size=4))
    reader = bench.bench_reader(tiny_records, cfg, batches=3, repeats=1)
    assert set(reader) == {"reader, no augmentation", "reader + augmentation"}
    assert all(rate > 0 for rate in reader.values())
    steps = bench.bench_training_steps(tiny_records, cfg, steps=1,
                                       variants={"gap": ({"head": "gap"}, {})})
    assert list(steps) == ["gap"] and steps["gap"] > 0
    share = bench.input_wait_share(tiny_records, cfg, steps=4)
    assert 0.0 <= share < 1.0


def test_each_backbone_has_its_own_cv_section():
    assert bench.cv_title() == bench.CV_TITLE
    assert bench.cv_title("birdnet") == f"{bench.CV_TITLE}, a head on birdnet embeddings"
    assert bench.cv_title("mobilenetv3small") == f"{bench.CV_TITLE}, mobilenetv3small from log-mels"


def test_embed_section_reports_both_realtime_factors_and_the_licence():
    result = {"files": 3, "audio_h": 0.5, "windows": 600, "decode_s": 6.0, "embed_s": 30.0,
              "decode_realtime": 300.0, "embed_realtime": 60.0,
              "backbone": {"name": "birdnet", "version": "V2.4", "sample_rate_hz": 48000,
                           "window_samples": 144000, "licence": "CC BY-NC-SA 4.0 (BirdNET)"}}
    section = bench.format_embed_section(result, "python -m tfbird bench embed --audio A")
    assert section.startswith(f"## {bench.EMBED_TITLE}\n")
    assert "| decode + resample + windows | 3 | 0.50 | 600 | 6.0 | 300x |" in section
    assert "| ... + embedding | 3 | 0.50 | 600 | 30.0 | 60x |" in section
    assert "CC BY-NC-SA 4.0" in section


def test_ingest_section_gives_the_stage_breakdown_with_shares():
    seconds = {"tfbird": 20.0, "librosa": 60.0, "floor_1": 20.0, "floor_2": 10.0}
    stages = {"files": 4, "audio_s": 1800.0, "in_process": 5.0,
              "seconds": {"startup": 9.0, "decode": 2.0, "resample": 1.0, "framing": 0.25,
                          "logmel": 0.5, "serialise": 0.125, "write": 0.125}}
    section = bench.format_ingest_section("Ingest", {"files": 10, "audio_s": 36000.0,
                                                     "repeats": 1, "seconds": seconds,
                                                     "stages": stages}, "cmd")
    assert "over 4 distinct files (0.50 h)" in section
    assert "| decode + downmix (soundfile, `read_mono`) | 2.00 | 50% |" in section
    assert "| sum of the work stages | 4.00 | 100% |" in section
    assert "in-process (warm) | 5.00 |" in section


def test_ingest_stage_seconds_times_every_stage(tmp_path):
    path = tmp_path / "audio" / "tone.wav"
    path.parent.mkdir()
    soundfile.write(path, np.sin(np.arange(22050 * 6) / 10.0).astype(np.float32), 22050)
    cfg = tiny_config(tmp_path)
    stages = bench.ingest_stage_seconds([path.parent], cfg)
    assert stages["files"] == 1 and abs(stages["audio_s"] - 6.0) < 1e-3
    assert set(stages["seconds"]) == {name for name, _ in bench.INGEST_STAGES}
    assert all(value > 0 for value in stages["seconds"].values()) and stages["in_process"] > 0
