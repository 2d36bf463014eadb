"""A deterministic synthetic bird-call corpus in BirdCLEF layout.

``synthesize_corpus`` writes::

    out_dir/
        train_audio/<label>/<label>_<NNNN>.<wav|flac|ogg|mp3>
        call_onsets.csv        filename, label, onset_s, offset_s (one row per species call)
        train_metadata.csv     BirdCLEF columns (see ``METADATA_COLUMNS``), written last

A present ``train_metadata.csv`` means the corpus is complete: it is removed first and
written (atomically) only after every audio file and ``call_onsets.csv``.

Species. Species ``i`` (label ``sp{i:02d}``) has vocalisation family ``FAMILIES[i % 10]``
(FM sweeps down and up, trills, harmonic stacks, buzzes, two-note whistles, chirp
sequences, warbles, descending cascades, arches), a centre frequency between 1.5 kHz and
about 5.5 kHz and shape parameters (durations, rates, spans) drawn from a species-level
generator. The centre frequency is where a clean call's spectrum peaks. Every call stays
below ``MAX_CALL_FREQUENCY_HZ`` (6.8 kHz) even at the highest pitch variation, so each
species is audible at every sample rate written, including 16 kHz MP3 (whose encoder
low-passes near 7.2 kHz).

Recordings. Each recording varies its species' pitch (x0.92-1.08, plus +-2% per call),
tempo (x0.85-1.15) and the level of every call. The primary species calls every 1-3 s on
average (never more than 4.5 s between onsets, so every 5-s window holds a primary call); a
``secondary_fraction`` share of recordings also holds a different species calling every
3-5 s on average. Every labelled species calls at least once, even in a recording shorter
than its call (the call is then moved earlier or cut). The background is a random mix of
pink noise, brown noise and wind (low-passed noise with slow gusts), plus distractor
sounds belonging to no species (clicks, short tone blips, short noise bursts).

SNR. A call's SNR is ``10 * log10(P_call / P_background)`` where both powers are mean
squares over the samples the call occupies, ``P_call`` of the call alone and
``P_background`` of the noise bed alone (pink + brown + wind; distractors and other calls
excluded). Each call and each distractor gets its own SNR drawn uniformly from
``[snr_db_min, snr_db_max]``. The mix is then scaled to a peak of 0.9.

Determinism. Everything follows from ``SynthConfig.seed`` through ``numpy.random.default_rng``
seeded with ``[seed, stream, index]``: the same seed gives the same CSVs, byte-identical
WAV, FLAC and MP3 files and identical decoded OGG samples (libsndfile gives every Ogg
stream a random serial number, so OGG bytes differ between runs).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from tfbird.artifacts import write_atomically
from tfbird.config import SynthConfig

METADATA_FILENAME = "train_metadata.csv"
ONSETS_FILENAME = "call_onsets.csv"
AUDIO_DIRNAME = "train_audio"
METADATA_COLUMNS = ("primary_label", "secondary_labels", "type", "latitude", "longitude",
                    "scientific_name", "common_name", "author", "license", "rating", "url",
                    "filename")
ONSET_COLUMNS = ("filename", "label", "onset_s", "offset_s")

FAMILIES = ("down_sweep", "up_sweep", "trill", "harmonic_stack", "buzz", "two_note",
            "chirp_sequence", "warble", "cascade", "arch")
SAMPLE_RATES_HZ = (16000, 22050, 32000, 44100, 48000)
# (soundfile format, subtype, file extension); FLAC alternates between 16 and 24 bit.
AUDIO_FORMATS = (("WAV", "PCM_16", "wav"), ("FLAC", None, "flac"), ("OGG", "VORBIS", "ogg"),
                 ("MP3", "MPEG_LAYER_III", "mp3"))
FLAC_SUBTYPES = ("PCM_16", "PCM_24")

MIN_CENTRE_HZ = 1500.0
MAX_CALL_FREQUENCY_HZ = 6800.0
PITCH_VARIATION = 0.08       # per recording, relative
CALL_PITCH_JITTER = 0.02     # per call, relative, on top of the recording's pitch
TEMPO_VARIATION = 0.15       # per recording, relative
PRIMARY_INTERVAL_S = (1.0, 3.0)    # range of a recording's mean onset-to-onset interval
SECONDARY_INTERVAL_S = (3.0, 5.0)
MIN_CALL_GAP_S = 0.1         # silence kept between two calls of the same species
MIN_CALL_FRACTION = 0.5      # a call cut by the end of a recording keeps at least this share
DISTRACTORS_PER_S = (0.1, 0.6)
STEREO_FRACTION = 0.25
STEREO_GAIN_RANGE = (0.8, 1.0)
STEREO_EXTRA_NOISE_DB = -25.0  # independent per-channel noise, relative to the noise bed
PEAK_LEVEL = 0.9
WIND_SAMPLE_RATE_HZ = 4000     # wind is synthesised at this rate and interpolated up

# Streams of the seed sequence [seed, stream, index] of every generator used here.
_SPECIES_STREAM, _RANK_STREAM, _PLAN_STREAM, _RECORDING_STREAM, _METADATA_STREAM = range(5)


# --- Species -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Species:
    """One synthetic species.

    Attributes:
        index: position in the species list (``label == species_codes(n)[index]``).
        label: species code, e.g. ``"sp03"``.
        family: vocalisation family, one of ``FAMILIES``.
        centre_hz: frequency where a clean call's spectrum peaks (Hz), at pitch factor 1.
        params: family shape parameters (durations in s, rates in Hz, frequency ratios).
    """

    index: int
    label: str
    family: str
    centre_hz: float
    params: dict = dataclasses.field(hash=False)

    @property
    def band_hz(self) -> tuple[float, float]:
        """Lowest and highest frequency of a clean call at pitch factor 1 (Hz)."""
        low, high = _band_factors(self.family, self.params)
        return low * self.centre_hz, high * self.centre_hz


def species_codes(num_species: int) -> list[str]:
    """Labels of the synthetic species.

    Args:
        num_species: how many species (at most 100).

    Returns:
        ``["sp00", "sp01", ...]``, ``num_species`` codes.
    """
    return [f"sp{i:02d}" for i in range(num_species)]


def make_species(num_species: int, seed: int) -> list[Species]:
    """Draws every species' family, centre frequency and shape parameters.

    Species ``i`` gets family ``FAMILIES[i % len(FAMILIES)]`` and a centre frequency in the
    range ``[MIN_CENTRE_HZ, c_max]``, ``c_max`` such that the call's highest frequency stays
    below ``MAX_CALL_FREQUENCY_HZ`` at the highest pitch variation. The position in that
    range (log scale) is stratified: species ``i`` takes stratum ``rank[i]`` of
    ``num_species`` equal strata (``rank`` a random permutation), so centre frequencies
    spread over the band instead of clustering by chance.

    Args:
        num_species: number of species.
        seed: the corpus seed.

    Returns:
        ``num_species`` ``Species``, in label order.
    """
    codes = species_codes(num_species)
    # Species i sits in stratum rank[i] (of num_species) of its own allowed range.
    rank = np.random.default_rng([seed, _RANK_STREAM, 0]).permutation(num_species)
    species = []
    for index, label in enumerate(codes):
        rng = np.random.default_rng([seed, _SPECIES_STREAM, index])
        family = FAMILIES[index % len(FAMILIES)]
        params = _draw_family_params(family, rng)
        quantile = (rank[index] + rng.uniform(0.2, 0.8)) / num_species
        high = _band_factors(family, params)[1]
        max_centre_hz = MAX_CALL_FREQUENCY_HZ / (
            high * (1 + PITCH_VARIATION) * (1 + CALL_PITCH_JITTER))
        if max_centre_hz <= MIN_CENTRE_HZ:  # cannot happen with the ranges below
            raise ValueError(f"Species {label} ({family}) cannot fit below "
                             f"{MAX_CALL_FREQUENCY_HZ} Hz. Received: params={params}")
        centre_hz = float(np.exp(np.log(MIN_CENTRE_HZ)
                                 + quantile * np.log(max_centre_hz / MIN_CENTRE_HZ)))
        species.append(Species(index=index, label=label, family=family,
                               centre_hz=round(centre_hz, 1), params=params))
    return species


def _draw_family_params(family: str, rng: np.random.Generator) -> dict:
    """Shape parameters of one species of ``family`` (times in s, rates in Hz)."""
    u = rng.uniform
    if family in ("down_sweep", "up_sweep"):
        return {"duration_s": u(0.15, 0.35) if family == "down_sweep" else u(0.1, 0.25),
                "span_ratio": u(1.25, 1.4)}
    if family == "trill":
        rate_hz = u(12.0, 20.0)
        return {"num_pulses": int(rng.integers(8, 17)), "pulse_s": u(0.45, 0.65) / rate_hz,
                "period_s": 1.0 / rate_hz, "span_ratio": u(1.05, 1.1)}
    if family == "harmonic_stack":
        return {"duration_s": u(0.25, 0.5), "num_harmonics": 3, "harmonic_decay": u(0.8, 1.2),
                "vibrato_hz": u(4.0, 8.0), "vibrato_depth": u(0.01, 0.02)}
    if family == "buzz":
        return {"duration_s": u(0.3, 0.7), "bandwidth": u(0.05, 0.08), "am_hz": u(30.0, 70.0)}
    if family == "two_note":
        pulse_s = u(0.12, 0.25)
        return {"pulse_s": pulse_s, "period_s": pulse_s + u(0.04, 0.1),
                "note_ratio": u(1.15, 1.25), "descending": bool(rng.integers(0, 2))}
    if family == "chirp_sequence":
        pulse_s = u(0.03, 0.06)
        return {"num_pulses": int(rng.integers(3, 7)), "pulse_s": pulse_s,
                "period_s": pulse_s + u(0.05, 0.1), "span_ratio": u(1.2, 1.3)}
    if family == "warble":
        return {"duration_s": u(0.4, 0.8), "fm_depth": u(0.08, 0.12), "fm_hz": u(6.0, 12.0)}
    if family == "cascade":
        pulse_s = u(0.04, 0.08)
        return {"num_pulses": int(rng.choice([5, 7])), "pulse_s": pulse_s,
                "period_s": pulse_s + u(0.02, 0.04), "span_ratio": u(1.2, 1.3)}
    if family == "arch":
        return {"duration_s": u(0.15, 0.3), "depth": u(0.2, 0.3)}
    raise ValueError(f"Unknown family. Received: family={family!r}")


def _band_factors(family: str, params: dict) -> tuple[float, float]:
    """Lowest and highest call frequency as multiples of the centre frequency."""
    if family in ("down_sweep", "up_sweep", "trill", "chirp_sequence", "cascade"):
        return 1.0 / params["span_ratio"], params["span_ratio"]
    if family == "harmonic_stack":
        depth = params["vibrato_depth"]
        return 1.0 - depth, params["num_harmonics"] * (1.0 + depth)
    if family == "buzz":
        return 1.0 - 3.0 * params["bandwidth"], 1.0 + 3.0 * params["bandwidth"]
    if family == "two_note":
        half = math.sqrt(params["note_ratio"])
        return 1.0 / half, half
    if family == "warble":
        return 1.0 - params["fm_depth"], 1.0 + params["fm_depth"]
    if family == "arch":
        return 1.0 - params["depth"], 1.0
    raise ValueError(f"Unknown family. Received: family={family!r}")


# --- Calls ---------------------------------------------------------------------------------


def render_call(species: Species, sample_rate_hz: int, rng: np.random.Generator,
                pitch_factor: float = 1.0, tempo_factor: float = 1.0) -> np.ndarray:
    """Renders one clean call of ``species`` (no background), peak 1.

    Args:
        species: the caller.
        sample_rate_hz: output sample rate (Hz).
        rng: source of the call's random details (buzz noise, phases).
        pitch_factor: multiplies every frequency of the call.
        tempo_factor: divides every duration of the call (above 1 is faster).

    Returns:
        float64 array of the call's samples.
    """
    p = species.params
    centre_hz = species.centre_hz * pitch_factor
    family = species.family

    def samples(duration_s: float) -> int:
        return max(int(round(duration_s / tempo_factor * sample_rate_hz)), 16)

    if family in ("down_sweep", "up_sweep"):
        ratio = p["span_ratio"] if family == "down_sweep" else 1.0 / p["span_ratio"]
        call = _pulse_train(centre_hz, [ratio], [1.0 / ratio], [1.0], samples(p["duration_s"]),
                            samples(p["duration_s"]), sample_rate_hz, "hann")
    elif family in ("trill", "chirp_sequence"):
        ratio = p["span_ratio"] if family == "trill" else 1.0 / p["span_ratio"]
        count = p["num_pulses"]
        call = _pulse_train(centre_hz, [ratio] * count, [1.0 / ratio] * count, [1.0] * count,
                            samples(p["pulse_s"]), samples(p["period_s"]), sample_rate_hz,
                            "hann")
    elif family in ("two_note", "cascade"):
        if family == "two_note":
            half = math.sqrt(p["note_ratio"])
            factors = [half, 1.0 / half] if p["descending"] else [1.0 / half, half]
            gains = [1.0, 1.0]
        else:
            count = p["num_pulses"]
            factors = list(p["span_ratio"] ** np.linspace(1.0, -1.0, count))
            gains = list(np.sin(np.pi * np.arange(1, count + 1) / (count + 1)))
        call = _pulse_train(centre_hz, factors, factors, gains, samples(p["pulse_s"]),
                            samples(p["period_s"]), sample_rate_hz, "tukey")
    elif family == "harmonic_stack":
        n = samples(p["duration_s"])
        t = np.arange(n) / sample_rate_hz
        vibrato_hz = p["vibrato_hz"] * tempo_factor
        f0 = centre_hz * (1.0 + p["vibrato_depth"] * np.sin(2 * np.pi * vibrato_hz * t))
        phase = 2 * np.pi * np.cumsum(f0) / sample_rate_hz
        harmonics = np.arange(1, p["num_harmonics"] + 1)
        gains = harmonics ** -p["harmonic_decay"]
        call = (gains[:, None] * np.sin(harmonics[:, None] * phase[None, :])).sum(axis=0)
        call *= _envelope(n, "tukey")
    elif family == "buzz":
        n = samples(p["duration_s"])
        call = _band_noise(n, sample_rate_hz, centre_hz, p["bandwidth"] * centre_hz, rng)
        t = np.arange(n) / sample_rate_hz
        call *= 0.6 + 0.4 * np.sin(2 * np.pi * p["am_hz"] * tempo_factor * t)
        call *= _envelope(n, "tukey")
    elif family == "warble":
        n = samples(p["duration_s"])
        t = np.arange(n) / sample_rate_hz
        fm = np.sin(2 * np.pi * p["fm_hz"] * tempo_factor * t + rng.uniform(0, 2 * np.pi))
        call = _tone(centre_hz * (1.0 + p["fm_depth"] * fm), sample_rate_hz)
        call *= _envelope(n, "tukey")
    elif family == "arch":
        n = samples(p["duration_s"])
        u = np.linspace(-1.0, 1.0, n)
        call = _tone(centre_hz * (1.0 - p["depth"] * u ** 2), sample_rate_hz)
        call *= _envelope(n, "hann")
    else:
        raise ValueError(f"Unknown family. Received: family={family!r}")
    return call / max(np.abs(call).max(), 1e-12)


def _pulse_train(centre_hz: float, start_factors, end_factors, gains, pulse_samples: int,
                 period_samples: int, sample_rate_hz: int, envelope: str) -> np.ndarray:
    """Pulses whose frequency glides (geometrically) from ``start`` to ``end`` x centre.

    Pulse ``k`` starts at sample ``k * period_samples``, lasts ``pulse_samples`` and is
    scaled by ``gains[k]``; identical pulses are rendered once.
    """
    count = len(start_factors)
    period_samples = max(period_samples, pulse_samples)
    train = np.zeros((count - 1) * period_samples + pulse_samples)
    window = _envelope(pulse_samples, envelope)
    u = np.linspace(0.0, 1.0, pulse_samples)
    rendered: dict[tuple[float, float], np.ndarray] = {}
    for k, (start, end, gain) in enumerate(zip(start_factors, end_factors, gains)):
        key = (float(start), float(end))
        if key not in rendered:
            frequency_hz = centre_hz * key[0] * (key[1] / key[0]) ** u
            rendered[key] = _tone(frequency_hz, sample_rate_hz) * window
        train[k * period_samples:k * period_samples + pulse_samples] = gain * rendered[key]
    return train


def _tone(frequency_hz: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    """A sinusoid following the instantaneous frequency ``frequency_hz`` (one per sample)."""
    return np.sin(2 * np.pi * np.cumsum(frequency_hz) / sample_rate_hz)


def _envelope(n: int, kind: str) -> np.ndarray:
    """Amplitude envelope of ``n`` samples: ``"hann"`` or ``"tukey"`` (20% cosine ramps)."""
    if kind == "hann":
        return np.hanning(n + 2)[1:-1]
    ramp = max(int(0.2 * n), 1)
    window = np.ones(n)
    rise = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp)
    window[:ramp] = rise
    window[n - ramp:] = rise[::-1]
    return window


def _band_noise(n: int, sample_rate_hz: int, centre_hz: float, sigma_hz: float,
                rng: np.random.Generator) -> np.ndarray:
    """Gaussian-band noise of ``n`` samples, spectrum cut beyond ``centre +- 3 sigma``."""
    size = _next_fast_len(n)
    frequency = np.fft.rfftfreq(size, 1.0 / sample_rate_hz)
    mask = np.exp(-0.5 * ((frequency - centre_hz) / sigma_hz) ** 2)
    mask[np.abs(frequency - centre_hz) > 3 * sigma_hz] = 0.0
    spectrum = _complex_gaussian(frequency.size, rng) * mask
    return np.fft.irfft(spectrum, size)[:n]


# --- Backgrounds ---------------------------------------------------------------------------


def render_background(num_samples: int, sample_rate_hz: int,
                      rng: np.random.Generator) -> np.ndarray:
    """A noise bed: a random mix of pink noise, brown noise and wind, unit RMS.

    Pink (1/f) and brown (1/f^2, flat below 20 Hz) noise are shaped in one spectrum; wind is
    noise low-passed at 150-500 Hz with slow random gusts (amplitude changes over 0.5-2 s).
    The mix weights (power shares) are drawn from a flat Dirichlet distribution.

    Args:
        num_samples: length of the bed.
        sample_rate_hz: sample rate (Hz).
        rng: source of the weights and the noise.

    Returns:
        float32 array of ``num_samples`` samples with mean square 1.
    """
    pink_share, brown_share, wind_share = rng.dirichlet([1.0, 1.0, 1.0])
    size = _next_fast_len(num_samples)
    frequency = np.fft.rfftfreq(size, 1.0 / sample_rate_hz).astype(np.float32)
    inverse = 1.0 / np.maximum(frequency, np.float32(20.0))
    inverse[0] = 0.0
    pink_weight = pink_share / float(inverse.sum(dtype=np.float64))
    brown_weight = brown_share / float(np.square(inverse).sum(dtype=np.float64))
    # Amplitude of pink (power 1/f) plus brown (power 1/f^2), each with its power share.
    amplitude = np.sqrt(inverse * (np.float32(pink_weight) + np.float32(brown_weight) * inverse))
    coloured = np.fft.irfft(_complex_gaussian(frequency.size, rng) * amplitude, size)
    bed = coloured[:num_samples]
    bed *= np.float32(math.sqrt(pink_share + brown_share) / _rms(bed))
    wind = _wind(num_samples, sample_rate_hz, rng)
    bed += wind * np.float32(math.sqrt(wind_share) / _rms(wind))
    bed *= np.float32(1.0 / _rms(bed))
    return bed


def _wind(num_samples: int, sample_rate_hz: int, rng: np.random.Generator) -> np.ndarray:
    """Low-passed noise with slow gusts, made at about ``WIND_SAMPLE_RATE_HZ``.

    It is made at ``sample_rate_hz / k`` for an integer ``k`` and linearly interpolated up
    (the images of its < 1 kHz content are more than 30 dB down).
    """
    factor = max(int(round(sample_rate_hz / WIND_SAMPLE_RATE_HZ)), 1)
    low_rate_hz = sample_rate_hz / factor
    low_samples = -(-num_samples // factor) + 1
    size = _next_fast_len(low_samples)
    frequency = np.fft.rfftfreq(size, 1.0 / low_rate_hz)
    cutoff_hz = rng.uniform(150.0, 500.0)
    mask = 1.0 / np.sqrt(1.0 + (frequency / cutoff_hz) ** 8)
    mask[0] = 0.0
    noise = np.fft.irfft(_complex_gaussian(frequency.size, rng) * mask, size)[:low_samples]
    duration_s = low_samples / low_rate_hz
    knot_spacing_s = rng.uniform(0.5, 2.0)
    knots_s = np.arange(0.0, duration_s + 2 * knot_spacing_s, knot_spacing_s)
    gusts = np.exp(0.7 * np.interp(np.arange(low_samples) / low_rate_hz, knots_s,
                                   rng.standard_normal(knots_s.size)))
    wind = (noise * gusts).astype(np.float32)
    fraction = (np.arange(factor) / factor).astype(np.float32)
    upsampled = wind[:-1, None] + (wind[1:] - wind[:-1])[:, None] * fraction[None, :]
    return upsampled.ravel()[:num_samples]


def _render_distractor(sample_rate_hz: int, rng: np.random.Generator) -> np.ndarray:
    """A sound of no species: a click, a short tone blip or a short noise burst; peak 1."""
    kind = rng.integers(0, 3)
    if kind == 0:  # click: decaying broadband noise, 1-5 ms
        n = max(int(rng.uniform(0.001, 0.005) * sample_rate_hz), 4)
        sound = rng.standard_normal(n) * np.exp(-np.arange(n) / (0.25 * n))
    elif kind == 1:  # blip: constant tone, 20-80 ms
        n = int(rng.uniform(0.02, 0.08) * sample_rate_hz)
        frequency_hz = rng.uniform(300.0, min(10000.0, 0.45 * sample_rate_hz))
        sound = _tone(np.full(n, frequency_hz), sample_rate_hz) * _envelope(n, "hann")
    else:  # burst: band noise, 50-150 ms
        n = int(rng.uniform(0.05, 0.15) * sample_rate_hz)
        centre_hz = rng.uniform(300.0, min(10000.0, 0.4 * sample_rate_hz))
        sigma_hz = centre_hz * rng.uniform(0.1, 0.4)
        sound = _band_noise(n, sample_rate_hz, centre_hz, sigma_hz, rng) * _envelope(n, "hann")
    return sound / max(np.abs(sound).max(), 1e-12)


# --- Recordings ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CallEvent:
    """One species call placed in a recording.

    Attributes:
        label: the caller's species code.
        onset_s: start of the call (s from the start of the recording).
        offset_s: end of the call (s), at most the recording's duration.
        snr_db: the call's SNR (dB) as defined in the module docstring.
    """

    label: str
    onset_s: float
    offset_s: float
    snr_db: float


@dataclasses.dataclass(frozen=True)
class RenderedRecording:
    """A rendered recording and what is in it.

    Attributes:
        audio: float32 samples, ``[num_samples]`` (mono) or ``[num_samples, channels]``,
            peak ``PEAK_LEVEL``.
        background: the noise bed alone, same shape and scale as ``audio``, so
            ``audio - background`` is the calls plus distractors.
        sample_rate_hz: sample rate (Hz).
        calls: every species call, ordered by species then onset.
        distractor_spans_s: ``(onset_s, offset_s)`` of every distractor sound.
    """

    audio: np.ndarray
    background: np.ndarray
    sample_rate_hz: int
    calls: tuple[CallEvent, ...]
    distractor_spans_s: tuple[tuple[float, float], ...]

    @property
    def duration_s(self) -> float:
        return self.audio.shape[0] / self.sample_rate_hz

    def onsets_by_label(self) -> dict[str, list[tuple[float, float]]]:
        """``{label: [(onset_s, offset_s), ...]}`` of the species calls."""
        spans: dict[str, list[tuple[float, float]]] = {}
        for call in self.calls:
            spans.setdefault(call.label, []).append((call.onset_s, call.offset_s))
        return spans


def render_recording(primary: Species, secondary: Species | None, duration_s: float,
                     sample_rate_hz: int, rng: np.random.Generator, *, snr_db_min: float,
                     snr_db_max: float, num_channels: int = 1) -> RenderedRecording:
    """Renders one recording: calls of one or two species over a noisy background.

    Args:
        primary: the species calling every ``PRIMARY_INTERVAL_S`` (1-3 s) on average.
        secondary: an optional second species calling every 3-5 s on average.
        duration_s: length of the recording (s); rounded to whole samples.
        sample_rate_hz: sample rate (Hz).
        rng: the recording's generator; the same state gives the same recording.
        snr_db_min: lowest per-call SNR (dB).
        snr_db_max: highest per-call SNR (dB).
        num_channels: 1 (mono) or 2 (stereo: per-channel gain 0.8-1.0 and independent
            noise at -25 dB relative to the bed).

    Returns:
        The ``RenderedRecording``; ``onsets_by_label()`` gives the call times per species.
    """
    num_samples = max(int(round(duration_s * sample_rate_hz)), 1)
    duration_s = num_samples / sample_rate_hz
    pitch_factor = 1.0 + rng.uniform(-PITCH_VARIATION, PITCH_VARIATION)
    tempo_factor = 1.0 + rng.uniform(-TEMPO_VARIATION, TEMPO_VARIATION)
    background = render_background(num_samples, sample_rate_hz, rng)
    foreground = np.zeros(num_samples, dtype=np.float32)
    calls = []
    callers = [(primary, PRIMARY_INTERVAL_S)]
    if secondary is not None:
        callers.append((secondary, SECONDARY_INTERVAL_S))
    for species, interval_range_s in callers:
        mean_interval_s = rng.uniform(*interval_range_s)
        onset_s = rng.uniform(0.0, 0.5 * min(mean_interval_s, duration_s))
        while onset_s < duration_s:
            jitter = 1.0 + rng.uniform(-CALL_PITCH_JITTER, CALL_PITCH_JITTER)
            call = render_call(species, sample_rate_hz, rng, pitch_factor * jitter,
                               tempo_factor)
            snr_db = rng.uniform(snr_db_min, snr_db_max)
            start = int(round(onset_s * sample_rate_hz))
            if num_samples - start < MIN_CALL_FRACTION * call.size:
                if calls and calls[-1].label == species.label:
                    break  # too little of the call would fit before the end
                start = max(num_samples - call.size, 0)  # every labelled species calls
            stop = _add_at_snr(foreground, background, call, start, snr_db)
            calls.append(CallEvent(species.label, start / sample_rate_hz,
                                   stop / sample_rate_hz, snr_db))
            onset_s = max(onset_s + mean_interval_s * rng.uniform(0.5, 1.5),
                          stop / sample_rate_hz + MIN_CALL_GAP_S)
    distractor_spans = []
    num_distractors = rng.poisson(duration_s * rng.uniform(*DISTRACTORS_PER_S))
    for start in np.sort(rng.integers(0, num_samples, num_distractors)):
        sound = _render_distractor(sample_rate_hz, rng)
        stop = _add_at_snr(foreground, background, sound, int(start),
                           rng.uniform(snr_db_min, snr_db_max))
        if stop > start:
            distractor_spans.append((start / sample_rate_hz, stop / sample_rate_hz))
    if num_channels == 1:
        audio, bed = background + foreground, background
    else:
        gains = rng.uniform(*STEREO_GAIN_RANGE, size=num_channels)
        extra = rng.standard_normal((num_samples, num_channels), dtype=np.float32)
        extra *= np.float32(10 ** (STEREO_EXTRA_NOISE_DB / 20))
        bed = background[:, None] * gains + extra
        audio = bed + foreground[:, None] * gains
    scale = PEAK_LEVEL / max(float(np.abs(audio).max()), 1e-12)
    return RenderedRecording(
        audio=(audio * scale).astype(np.float32),
        background=(bed * scale).astype(np.float32),
        sample_rate_hz=sample_rate_hz, calls=tuple(calls),
        distractor_spans_s=tuple(distractor_spans))


def _add_at_snr(foreground: np.ndarray, background: np.ndarray, sound: np.ndarray,
                start: int, snr_db: float) -> int:
    """Adds ``sound`` at ``start`` scaled to ``snr_db`` over the local background power.

    The sound is cut at the end of the recording. Returns the end sample (exclusive).
    """
    stop = min(start + sound.size, foreground.size)
    if stop <= start:
        return start
    sound = sound[:stop - start]
    sound_power = _rms(sound) ** 2
    background_power = _rms(background[start:stop]) ** 2
    gain = math.sqrt(background_power * 10 ** (snr_db / 10) / sound_power)
    foreground[start:stop] += gain * sound
    return stop


# --- Corpus --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RecordingPlan:
    """Everything that decides one file of the corpus, before rendering.

    Attributes:
        index: position in the corpus (species-major); seeds the recording's generator.
        primary_label: the primary species' code.
        secondary_label: the secondary species' code, or ``None``.
        filename: path relative to ``train_audio/``, e.g. ``"sp03/sp03_0007.ogg"``.
        duration_s: requested duration (s).
        sample_rate_hz: sample rate of the file (Hz).
        num_channels: 1 or 2.
        format: soundfile major format (``"WAV"``, ``"FLAC"``, ``"OGG"``, ``"MP3"``).
        subtype: soundfile subtype (``"PCM_16"``, ``"PCM_24"``, ``"VORBIS"``,
            ``"MPEG_LAYER_III"``).
    """

    index: int
    primary_label: str
    secondary_label: str | None
    filename: str
    duration_s: float
    sample_rate_hz: int
    num_channels: int
    format: str
    subtype: str


def plan_corpus(cfg: SynthConfig) -> list[RecordingPlan]:
    """Decides every recording's species, duration, sample rate, channels and format.

    Recording ``index = species * recordings_per_species + j`` has format
    ``AUDIO_FORMATS[index % 4]`` (FLAC alternating 16/24 bit) and sample rate
    ``SAMPLE_RATES_HZ[index % 5]``; ``round(total * STEREO_FRACTION)`` recordings chosen at
    random are stereo and ``round(total * secondary_fraction)`` carry a random other species
    (none when there is a single species). Durations are uniform in
    ``[min_duration_s, max_duration_s]``.

    Args:
        cfg: the synthetic corpus configuration.

    Returns:
        One ``RecordingPlan`` per recording, in index order.
    """
    codes = species_codes(cfg.num_species)
    total = cfg.num_species * cfg.recordings_per_species
    rng = np.random.default_rng([cfg.seed, _PLAN_STREAM, 0])
    durations_s = rng.uniform(cfg.min_duration_s, cfg.max_duration_s, total)
    stereo = np.zeros(total, dtype=bool)
    stereo[rng.choice(total, size=int(round(total * STEREO_FRACTION)), replace=False)] = True
    with_secondary = np.zeros(total, dtype=bool)
    if cfg.num_species > 1:
        count = int(round(total * cfg.secondary_fraction))
        with_secondary[rng.choice(total, size=count, replace=False)] = True
    other_offsets = rng.integers(1, max(cfg.num_species, 2), total)
    plans = []
    for index in range(total):
        species_index, j = divmod(index, cfg.recordings_per_species)
        label = codes[species_index]
        secondary = None
        if with_secondary[index]:
            secondary = codes[(species_index + other_offsets[index]) % cfg.num_species]
        audio_format, subtype, extension = AUDIO_FORMATS[index % len(AUDIO_FORMATS)]
        if audio_format == "FLAC":
            subtype = FLAC_SUBTYPES[(index // len(AUDIO_FORMATS)) % len(FLAC_SUBTYPES)]
        plans.append(RecordingPlan(
            index=index, primary_label=label, secondary_label=secondary,
            filename=f"{label}/{label}_{j:04d}.{extension}",
            duration_s=float(durations_s[index]),
            sample_rate_hz=SAMPLE_RATES_HZ[index % len(SAMPLE_RATES_HZ)],
            num_channels=2 if stereo[index] else 1, format=audio_format, subtype=subtype))
    return plans


def write_audio(path: str | Path, audio: np.ndarray, sample_rate_hz: int, audio_format: str,
                subtype: str, block_s: float = 1.0) -> None:
    """Writes samples with libsndfile in blocks (one call crashes it on long OGG/MP3).

    Args:
        path: output file; its folder must exist.
        audio: ``[num_samples]`` or ``[num_samples, channels]`` floats in ``[-1, 1]``.
        sample_rate_hz: sample rate (Hz).
        audio_format: soundfile major format, e.g. ``"OGG"``.
        subtype: soundfile subtype, e.g. ``"VORBIS"``.
        block_s: seconds written per call.
    """
    channels = 1 if audio.ndim == 1 else audio.shape[1]
    block = max(int(block_s * sample_rate_hz), 1)
    with sf.SoundFile(path, "w", samplerate=sample_rate_hz, channels=channels,
                      format=audio_format, subtype=subtype) as handle:
        for start in range(0, audio.shape[0], block):
            handle.write(audio[start:start + block])


def synthesize_corpus(out_dir: str | Path, cfg: SynthConfig, progress: bool = True, *,
                      workers: int | None = None) -> Path:
    """Writes the synthetic corpus (audio, ``call_onsets.csv``, then ``train_metadata.csv``).

    An existing ``train_metadata.csv`` is removed first, so an interrupted run leaves no
    metadata; the caller treats a present ``train_metadata.csv`` as a complete corpus.
    Recordings are rendered and encoded in ``workers`` threads (numpy and libsndfile release
    the GIL); each has its own generator, so the output does not depend on ``workers``.

    Args:
        out_dir: corpus folder (created if missing).
        cfg: the synthetic corpus configuration; everything follows from ``cfg.seed``.
        progress: show a progress bar over recordings.
        workers: threads; ``None`` uses up to 4, one per CPU.

    Returns:
        Path of ``out_dir/train_metadata.csv``.
    """
    cfg.validate()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metadata_path = out_dir / METADATA_FILENAME
    metadata_path.unlink(missing_ok=True)
    species = {s.label: s for s in make_species(cfg.num_species, cfg.seed)}
    plans = plan_corpus(cfg)
    for label in species:
        (out_dir / AUDIO_DIRNAME / label).mkdir(parents=True, exist_ok=True)

    def synthesize_one(plan: RecordingPlan) -> tuple[tuple, list[tuple]]:
        rng = np.random.default_rng([cfg.seed, _RECORDING_STREAM, plan.index])
        recording = render_recording(
            species[plan.primary_label],
            species[plan.secondary_label] if plan.secondary_label else None,
            plan.duration_s, plan.sample_rate_hz, rng, snr_db_min=cfg.snr_db_min,
            snr_db_max=cfg.snr_db_max, num_channels=plan.num_channels)
        write_audio(out_dir / AUDIO_DIRNAME / plan.filename, recording.audio,
                    plan.sample_rate_hz, plan.format, plan.subtype)
        onsets = [(plan.filename, call.label, f"{call.onset_s:.4f}", f"{call.offset_s:.4f}")
                  for call in recording.calls]
        return _metadata_row(plan, species[plan.primary_label], cfg.seed), onsets

    workers = workers or min(4, os.cpu_count() or 1)
    metadata_rows, onset_rows = [], []
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        results = pool.map(synthesize_one, plans)
        for row, onsets in tqdm(results, total=len(plans), desc="synth", unit="rec",
                                disable=None if progress else True):
            metadata_rows.append(row)
            onset_rows.extend(onsets)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    _write_csv(out_dir / ONSETS_FILENAME, ONSET_COLUMNS, onset_rows)
    _write_csv(metadata_path, METADATA_COLUMNS, metadata_rows)
    return metadata_path


def _metadata_row(plan: RecordingPlan, species: Species, seed: int) -> tuple:
    """The plausible BirdCLEF metadata of one recording, in ``METADATA_COLUMNS`` order."""
    rng = np.random.default_rng([seed, _METADATA_STREAM, plan.index])
    secondary = [plan.secondary_label] if plan.secondary_label else []
    call_type = ["['song']", "['call']", "['call', 'song']"][rng.integers(0, 3)]
    return (plan.primary_label, str(secondary), call_type,
            f"{rng.uniform(-60.0, 70.0):.4f}", f"{rng.uniform(-180.0, 180.0):.4f}",
            f"Avis synthetica {species.index:02d}", f"Synthetic bird {species.index:02d}",
            "tfbird synth", "CC0", f"{rng.integers(0, 11) / 2:.1f}", "", plan.filename)


def _write_csv(path: Path, columns, rows) -> None:
    """Writes a UTF-8 CSV atomically (``artifacts.write_atomically``)."""
    text = io.StringIO(newline="")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    write_atomically(path, text.getvalue().encode("utf-8"))


# --- Small helpers -------------------------------------------------------------------------


def _rms(x: np.ndarray) -> float:
    """Root mean square (at least 1e-12); plain numpy, no BLAS threads."""
    if x.size == 0:
        return 1e-12
    return max(math.sqrt(float(np.mean(np.square(x), dtype=np.float64))), 1e-12)


def _complex_gaussian(size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` complex64 standard normal values (the spectrum of white noise)."""
    return rng.standard_normal(2 * size, dtype=np.float32).view(np.complex64)


def _next_fast_len(n: int) -> int:
    """Smallest ``2^a 3^b 5^c >= n`` (a fast FFT length)."""
    best = 1 << max(n - 1, 0).bit_length()
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            candidate = power35 << max(math.ceil(math.log2(n / power35)), 0)
            best = min(best, candidate)
            power35 *= 3
        power5 *= 5
    return best
