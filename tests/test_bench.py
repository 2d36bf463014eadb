"""Benchmark plumbing: BENCHMARKS.md sections are replaced, not duplicated."""

from tfbird import bench


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


def test_format_section_adds_the_decode_only_floor_when_measured():
    result = {"files": 2, "audio_s": 3600.0, "librosa_s": 30.0, "tfbird_s": 10.0,
              "decode_only_s": 5.0}
    section = bench.format_section("Ingest", result, "Work on", repeats=3)
    assert "| decode + resample only (soundfile + soxr, 1 thread) | 5.00 | 720x |" in section
    assert "tfbird runs at 0.50x the decode-only rate." in section
