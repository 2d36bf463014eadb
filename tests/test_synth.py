"""Tests of the synthetic bird-call corpus (tfbird.synth)."""

import ast
import csv
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tfbird import synth
from tfbird.config import SynthConfig

TINY = SynthConfig(num_species=3, recordings_per_species=4, min_duration_s=1.0,
                   max_duration_s=3.0, secondary_fraction=0.5, snr_db_min=0.0,
                   snr_db_max=15.0, seed=7)


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames), list(reader)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp("corpus")
    metadata_path = synth.synthesize_corpus(out_dir, TINY, progress=False)
    assert metadata_path == out_dir / "train_metadata.csv"
    return out_dir


@pytest.fixture(scope="module")
def corpus_again(tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp("corpus_again")
    synth.synthesize_corpus(out_dir, TINY, progress=False, workers=1)
    return out_dir


def test_species_codes():
    assert synth.species_codes(3) == ["sp00", "sp01", "sp02"]
    assert synth.species_codes(12)[-1] == "sp11"


def test_metadata_columns_exactly_in_order(corpus):
    columns, rows = _read_csv(corpus / "train_metadata.csv")
    assert columns == ["primary_label", "secondary_labels", "type", "latitude", "longitude",
                       "scientific_name", "common_name", "author", "license", "rating", "url",
                       "filename"]
    assert len(rows) == 12
    assert sorted({row["primary_label"] for row in rows}) == ["sp00", "sp01", "sp02"]
    for row in rows:
        assert row["filename"].startswith(row["primary_label"] + "/")
        assert -90 <= float(row["latitude"]) <= 90 and -180 <= float(row["longitude"]) <= 180
        assert 0.0 <= float(row["rating"]) <= 5.0
        assert isinstance(ast.literal_eval(row["type"]), list)


def test_every_file_matches_its_plan(corpus):
    _, rows = _read_csv(corpus / "train_metadata.csv")
    plans = {plan.filename: plan for plan in synth.plan_corpus(TINY)}
    assert sorted(plans) == sorted(row["filename"] for row in rows)
    for row in rows:
        plan = plans[row["filename"]]
        path = corpus / "train_audio" / row["filename"]
        info = sf.info(path)
        assert info.samplerate == plan.sample_rate_hz
        assert info.channels == plan.num_channels
        assert info.format == plan.format and info.subtype == plan.subtype
        audio, sample_rate_hz = sf.read(path, dtype="float32", always_2d=True)
        assert sample_rate_hz == plan.sample_rate_hz
        assert audio.shape[1] == plan.num_channels
        duration_s = audio.shape[0] / sample_rate_hz
        assert TINY.min_duration_s - 0.01 <= duration_s <= TINY.max_duration_s + 0.01
        assert abs(duration_s - plan.duration_s) < 0.01
        peak = float(np.abs(audio).max())
        assert 0.5 < peak < 1.0, (row["filename"], peak)


def test_corpus_mixes_formats_rates_and_channels(corpus):
    plans = synth.plan_corpus(TINY)
    infos = [sf.info(corpus / "train_audio" / plan.filename) for plan in plans]
    assert {info.format for info in infos} == {"WAV", "FLAC", "OGG", "MP3"}
    assert len({info.samplerate for info in infos}) == 5
    assert sum(info.channels == 2 for info in infos) == round(12 * synth.STEREO_FRACTION)


def test_mp3_is_available():
    assert "MP3" in sf.available_formats()


def test_secondary_labels_parse_and_differ_from_primary(corpus):
    _, rows = _read_csv(corpus / "train_metadata.csv")
    with_secondary = 0
    for row in rows:
        secondary = ast.literal_eval(row["secondary_labels"])
        assert isinstance(secondary, list)
        assert row["primary_label"] not in secondary
        assert set(secondary) <= {"sp00", "sp01", "sp02"}
        with_secondary += bool(secondary)
    assert with_secondary == round(12 * TINY.secondary_fraction)


def test_onsets_lie_inside_their_recordings(corpus):
    columns, onsets = _read_csv(corpus / "call_onsets.csv")
    assert columns == ["filename", "label", "onset_s", "offset_s"]
    _, rows = _read_csv(corpus / "train_metadata.csv")
    by_file = {row["filename"]: row for row in rows}
    primary_calls = dict.fromkeys(by_file, 0)
    for onset in onsets:
        row = by_file[onset["filename"]]
        allowed = {row["primary_label"], *ast.literal_eval(row["secondary_labels"])}
        assert onset["label"] in allowed
        duration_s = sf.info(corpus / "train_audio" / onset["filename"]).duration
        assert 0.0 <= float(onset["onset_s"]) < float(onset["offset_s"]) <= duration_s + 1e-3
        primary_calls[onset["filename"]] += onset["label"] == row["primary_label"]
    assert all(count >= 1 for count in primary_calls.values()), primary_calls


def test_same_seed_gives_identical_corpus(corpus, corpus_again):
    for name in ("train_metadata.csv", "call_onsets.csv"):
        assert (corpus / name).read_bytes() == (corpus_again / name).read_bytes()
    for plan in synth.plan_corpus(TINY):
        first = corpus / "train_audio" / plan.filename
        second = corpus_again / "train_audio" / plan.filename
        if plan.format in ("WAV", "FLAC", "MP3"):
            assert first.read_bytes() == second.read_bytes(), plan.filename
        else:  # libsndfile gives each Ogg stream a random serial number: compare samples
            np.testing.assert_array_equal(sf.read(first)[0], sf.read(second)[0])


def test_different_seed_gives_different_corpus(corpus, tmp_path):
    other = SynthConfig(**{**TINY.__dict__, "seed": TINY.seed + 1})
    synth.synthesize_corpus(tmp_path, other, progress=False)
    assert (tmp_path / "train_metadata.csv").read_bytes() != (
        corpus / "train_metadata.csv").read_bytes()
    wav = next(plan.filename for plan in synth.plan_corpus(TINY) if plan.format == "WAV")
    assert (tmp_path / "train_audio" / wav).read_bytes() != (
        corpus / "train_audio" / wav).read_bytes()


def test_interrupted_run_leaves_no_metadata(tmp_path, monkeypatch):
    (tmp_path / "train_metadata.csv").write_text("stale\n")
    calls = []

    def failing_write(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("disk full")

    monkeypatch.setattr(synth, "write_audio", failing_write)
    with pytest.raises(RuntimeError, match="disk full"):
        synth.synthesize_corpus(tmp_path, TINY, progress=False, workers=1)
    assert not (tmp_path / "train_metadata.csv").exists()


@pytest.mark.parametrize("sample_rate_hz,num_channels", [(22050, 1), (48000, 2)])
def test_rendered_calls_have_the_requested_snr(sample_rate_hz, num_channels):
    species = synth.make_species(4, seed=3)
    recording = synth.render_recording(
        species[2], species[0], duration_s=12.0, sample_rate_hz=sample_rate_hz,
        rng=np.random.default_rng(5), snr_db_min=10.0, snr_db_max=10.0,
        num_channels=num_channels)
    assert recording.audio.dtype == np.float32
    assert recording.audio.shape == recording.background.shape
    assert recording.audio.shape[0] == 12 * sample_rate_hz
    assert abs(float(np.abs(recording.audio).max()) - synth.PEAK_LEVEL) < 1e-3
    audio = recording.audio.reshape(recording.audio.shape[0], -1).astype(np.float64)
    background = recording.background.reshape(audio.shape).astype(np.float64)
    spans = [(c.onset_s, c.offset_s) for c in recording.calls]
    spans += list(recording.distractor_spans_s)
    checked = 0
    for call in recording.calls:
        overlaps = sum(a < call.offset_s and call.onset_s < b for a, b in spans)
        if overlaps > 1:  # the call itself is one of the spans
            continue
        start = round(call.onset_s * sample_rate_hz)
        stop = round(call.offset_s * sample_rate_hz)
        for channel in range(audio.shape[1]):
            bed = background[start:stop, channel]
            mix = audio[start:stop, channel]
            bed_power = np.mean(bed ** 2)
            snr_db = 10 * math.log10(np.mean((mix - bed) ** 2) / bed_power)
            assert abs(snr_db - 10.0) < 1.0, (call, snr_db)
            # Without the separate bed: the mix has call plus background power.
            mix_snr_db = 10 * math.log10(np.mean(mix ** 2) / bed_power - 1.0)
            assert abs(mix_snr_db - 10.0) < 1.0, (call, mix_snr_db)
        checked += 1
    assert checked >= 3


def test_every_five_second_window_holds_a_primary_call():
    species = synth.make_species(10, seed=0)
    for primary in species:
        recording = synth.render_recording(
            primary, None, duration_s=30.0, sample_rate_hz=16000,
            rng=np.random.default_rng(primary.index), snr_db_min=-5.0, snr_db_max=20.0)
        spans = recording.onsets_by_label()[primary.label]
        assert set(recording.onsets_by_label()) == {primary.label}
        assert 30.0 / 3.5 <= len(spans) <= 30.0 / 0.5 + 1, (primary.family, len(spans))
        for window_start_s in np.arange(0.0, 25.0 + 1e-9, 1.0):
            window_stop_s = window_start_s + 5.0
            assert any(a < window_stop_s and window_start_s < b for a, b in spans), (
                primary.family, window_start_s)


def test_species_are_distinct_and_inside_every_sample_rate():
    species = synth.make_species(10, seed=0)
    assert [s.family for s in species] == list(synth.FAMILIES)
    assert len({round(s.centre_hz) for s in species}) == 10
    for s in species:
        assert synth.MIN_CENTRE_HZ <= s.centre_hz
        highest_hz = s.band_hz[1] * (1 + synth.PITCH_VARIATION) * (1 + synth.CALL_PITCH_JITTER)
        assert highest_hz <= synth.MAX_CALL_FREQUENCY_HZ < min(synth.SAMPLE_RATES_HZ) / 2


@pytest.mark.parametrize("sample_rate_hz", [16000, 32000])
def test_clean_call_energy_sits_in_its_species_band(sample_rate_hz):
    for species in synth.make_species(10, seed=0):
        call = synth.render_call(species, sample_rate_hz, np.random.default_rng(0))
        size = 1 << 18
        power = np.abs(np.fft.rfft(call, size)) ** 2
        frequency_hz = np.fft.rfftfreq(size, 1.0 / sample_rate_hz)
        smooth = max(int(60.0 / (frequency_hz[1])), 1)  # 60 Hz moving average
        peak_hz = frequency_hz[np.argmax(np.convolve(power, np.ones(smooth), "same"))]
        assert abs(peak_hz / species.centre_hz - 1.0) <= 0.15, (species, peak_hz)
        low_hz, high_hz = species.band_hz
        in_band = power[(frequency_hz >= 0.97 * low_hz) & (frequency_hz <= 1.03 * high_hz)]
        assert in_band.sum() / power.sum() > 0.95, species
        # Even at the highest pitch nothing reaches the 16 kHz MP3 low-pass (about 7.2 kHz).
        high = synth.render_call(species, 16000, np.random.default_rng(0),
                                 pitch_factor=(1 + synth.PITCH_VARIATION)
                                 * (1 + synth.CALL_PITCH_JITTER))
        high_power = np.abs(np.fft.rfft(high, 1 << 16)) ** 2
        above = high_power[np.fft.rfftfreq(1 << 16, 1 / 16000) > 7000.0].sum()
        assert above / high_power.sum() < 1e-4, species


def test_rendering_is_deterministic():
    species = synth.make_species(2, seed=1)
    first, second = (synth.render_recording(
        species[0], species[1], duration_s=4.0, sample_rate_hz=32000,
        rng=np.random.default_rng([1, 2]), snr_db_min=-5.0, snr_db_max=20.0)
        for _ in range(2))
    np.testing.assert_array_equal(first.audio, second.audio)
    assert first.calls == second.calls


def test_background_has_unit_power():
    bed = synth.render_background(22050 * 3, 22050, np.random.default_rng(0))
    assert bed.shape == (22050 * 3,)
    assert abs(float(np.mean(bed.astype(np.float64) ** 2)) - 1.0) < 1e-3
