"""Audio files -> mono float32 waveforms at the model's sample rate, and waveforms -> windows.

Decoding uses soundfile (libsndfile: WAV, FLAC, OGG Vorbis, Opus, MP3, ...), downmixes by the
channel mean and resamples with soxr's high quality mode: the same steps and defaults as
``librosa.load(path, sr=..., mono=True)``, which is the reference. Decoding is plain numpy, with
no TensorFlow (ingest runs it in worker processes, ``tfbird.decode_workers``), and so is cutting
windows: ``stream_windows``, block by block, with the tail rule a parameter;
``recording_elements`` is one recording's windows as ingest reads them.

Example:
    >>> waveform = load_waveform("call.flac", sample_rate_hz=32000)
    >>> windows = np.concatenate([w for w, _ in stream_cut_windows([waveform], AudioConfig())])
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import soundfile
import soxr

from tfbird.config import TAIL_RULES, AudioConfig, Config


class AudioDecodeError(ValueError):
    """A file that cannot become a waveform.

    The message is ``"<reason>: <detail naming the file>"``; the reason is one of
    ``DECODE_FAILURE_REASONS``, and ``failure_reason(message)`` gets it back.
    """


# "decoder crashed": the worker process decoding the file died (tfbird.decode_workers).
DECODE_FAILURE_REASONS = ("file missing", "empty", "unreadable", "no audio after decode",
                          "all-NaN", "non-finite", "decoder crashed")


def failure_reason(message: str) -> str:
    """The reason part (before the first ``": "``) of an ``AudioDecodeError`` message."""
    return message.split(": ", 1)[0]


def check_file_exists_with_bytes(path: str | Path) -> Path:
    """``path`` as a ``Path``; ``AudioDecodeError`` "file missing" or "empty" (zero bytes)."""
    path = Path(path)
    if not path.is_file():
        raise AudioDecodeError(f"file missing: {path}")
    if path.stat().st_size == 0:
        raise AudioDecodeError(f"empty: the file has zero bytes: {path}")
    return path


def load_waveform(path: str | Path, sample_rate_hz: int) -> np.ndarray:
    """Decodes an audio file to a mono float32 waveform at ``sample_rate_hz``.

    Args:
        path: any file libsndfile reads (WAV, FLAC, OGG Vorbis, Opus, MP3, ...).
        sample_rate_hz: the rate of the returned waveform (Hz).

    Returns:
        float32 array ``[samples]``.

    Raises:
        AudioDecodeError: missing file (``file missing``), zero bytes (``empty``), not audio
            (``unreadable``), no frames (``no audio after decode``), only NaN samples
            (``all-NaN``) or some NaN/inf samples (``non-finite``).
    """
    with open_sound(path) as sound:
        return decode_whole(sound, sample_rate_hz)


def open_sound(path: str | Path) -> soundfile.SoundFile:
    """Opens ``path`` for reading; ``AudioDecodeError`` when missing, empty or not audio."""
    path = check_file_exists_with_bytes(path)
    try:
        return soundfile.SoundFile(path)
    except Exception as error:  # libsndfile raises several types; all mean "unreadable".
        raise AudioDecodeError(f"unreadable: {path}: {error}") from error


def read_mono(sound: soundfile.SoundFile, frames: int = -1) -> np.ndarray:
    """Reads up to ``frames`` frames (-1: all) and downmixes them by the channel mean."""
    try:
        audio = sound.read(frames, dtype="float32", always_2d=True)
    except Exception as error:  # A file cut short or corrupt inside.
        raise AudioDecodeError(f"unreadable: {sound.name}: {error}") from error
    return channel_mean(audio)


def channel_mean(audio: np.ndarray) -> np.ndarray:
    """``audio.mean(axis=1, dtype=float32)`` of ``[frames, channels]`` float32, bit for bit,
    in a third of the time: numpy's mean over the short channel axis loops per frame, this
    adds whole channels (left to right, as numpy's sum) and divides once. Adding ``+0.0``
    first turns ``-0.0`` samples into ``+0.0``, as numpy's sum (which starts from ``+0.0``)."""
    mono = audio[:, 0] + np.float32(0.0)
    for channel in range(1, audio.shape[1]):
        mono += audio[:, channel]
    if audio.shape[1] > 1:
        mono /= np.float32(audio.shape[1])
    return mono


def decode_whole(sound: soundfile.SoundFile, sample_rate_hz: int) -> np.ndarray:
    """The rest of an open file as one mono waveform at ``sample_rate_hz`` (see
    ``load_waveform``)."""
    mono = read_mono(sound)
    if len(mono) == 0:
        raise AudioDecodeError(f"no audio after decode: the file holds no audio frames: "
                               f"{sound.name}")
    num_finite = np.count_nonzero(np.isfinite(mono))
    if num_finite < len(mono):
        raise non_finite_error(len(mono) - num_finite, len(mono), sound.name)
    return resample(mono, sound.samplerate, sample_rate_hz)


def non_finite_error(num_non_finite: int, num_frames: int, path) -> AudioDecodeError:
    """``all-NaN`` when every sample is NaN or inf, else ``non-finite`` with the count."""
    if num_non_finite == num_frames:
        return AudioDecodeError(f"all-NaN: every sample is non-finite (NaN or inf): {path}")
    return AudioDecodeError(f"non-finite: {num_non_finite} of {num_frames} samples are NaN "
                            f"or inf: {path}")


def resampled_length(num_frames: int, source_rate_hz: int, sample_rate_hz: int) -> int:
    """Samples after resampling ``num_frames``: ``ceil(num_frames * ratio)``, as librosa."""
    return int(np.ceil(num_frames * sample_rate_hz / source_rate_hz))


def resample(waveform: np.ndarray, source_rate_hz: int, sample_rate_hz: int) -> np.ndarray:
    """Resamples with soxr 'HQ' (librosa's default ``res_type='soxr_hq'``)."""
    if source_rate_hz == sample_rate_hz:
        return np.ascontiguousarray(waveform, dtype=np.float32)
    resampled = soxr.resample(waveform, source_rate_hz, sample_rate_hz, quality="HQ")
    # librosa fixes the length to ceil(n * ratio); soxr may return one sample fewer.
    num_samples = resampled_length(len(waveform), source_rate_hz, sample_rate_hz)
    return fix_length(resampled.astype(np.float32, copy=False), num_samples)


def fix_length(waveform: np.ndarray, num_samples: int) -> np.ndarray:
    """``waveform`` cut or zero-padded at the end to ``num_samples``, as
    ``librosa.util.fix_length`` (without importing librosa, whose first use compiles numba
    functions for about a second)."""
    if len(waveform) >= num_samples:
        return waveform[:num_samples]
    return np.pad(waveform, (0, num_samples - len(waveform)))


def stream_waveform(path: str | Path, sample_rate_hz: int, block_s: float = 60.0
                    ) -> Iterator[np.ndarray]:
    """Decodes a recording block by block to mono float32 at ``sample_rate_hz``.

    A file of at most ``block_s`` seconds (by its header) is decoded whole by
    ``load_waveform``'s steps and yields one block. A longer one is read in blocks of
    ``block_s`` seconds with ``SoundFile.read``, downmixed by the channel mean and fed to
    ``soxr.ResampleStream`` (HQ, as ``resample``); the last block is cut or zero-padded so
    the total length is ``resampled_length`` of the frames read, as ``load_waveform``'s.
    The samples differ from resampling the whole file at once by less than 1e-4.

    Args:
        path: any file libsndfile reads.
        sample_rate_hz: rate of the blocks yielded (Hz).
        block_s: length of each block read, in seconds of the source.

    Yields:
        float32 blocks ``[samples]`` (their lengths vary).

    Raises:
        AudioDecodeError: the reasons of ``load_waveform``, raised when the problem is met,
            possibly after some blocks were yielded. NaN/inf samples are counted over the
            rest of the file first, so the reason (``all-NaN`` or ``non-finite``) is the same
            as ``load_waveform``'s.

    Example:
        >>> waveform = np.concatenate(list(stream_waveform("dawn_chorus.flac", 32000)))
    """
    with open_sound(path) as sound:
        source_rate_hz = sound.samplerate
        block_frames = frames_in(block_s, source_rate_hz)
        if sound.frames <= block_frames:
            yield decode_whole(sound, sample_rate_hz)
            return
        resampler = (None if source_rate_hz == sample_rate_hz else soxr.ResampleStream(
            source_rate_hz, sample_rate_hz, 1, dtype="float32", quality="HQ"))
        num_frames = num_samples = 0
        held = np.zeros(0, np.float32)  # Held back until the end is known, to fix the length.
        while True:
            mono = read_mono(sound, block_frames)
            num_non_finite = len(mono) - np.count_nonzero(np.isfinite(mono))
            if num_non_finite:
                raise count_non_finite_error(sound, block_frames, num_non_finite,
                                             num_frames + len(mono))
            num_frames += len(mono)
            last = len(mono) == 0
            out = mono if resampler is None else resampler.resample_chunk(mono, last=last)
            if len(out):
                if len(held):
                    yield held
                held = out
                num_samples += len(out)
            if last:
                break
        if num_frames == 0:
            raise AudioDecodeError(f"no audio after decode: the file holds no audio frames: "
                                   f"{sound.name}")
        excess = num_samples - resampled_length(num_frames, source_rate_hz, sample_rate_hz)
        yield held[:len(held) - excess] if excess > 0 else np.pad(held, (0, -excess))


def frames_in(block_s: float, source_rate_hz: int) -> int:
    """Frames of a ``block_s``-second block at ``source_rate_hz`` (at least 1)."""
    return max(1, int(round(block_s * source_rate_hz)))


class CountedBlocks:
    """Iterates over waveform ``blocks``, adding their lengths to ``num_samples``.

    Example:
        >>> blocks = CountedBlocks(stream_waveform(path, 32000))
        >>> for block in blocks: ...
        >>> blocks.num_samples / 32000  # seconds read so far
    """

    def __init__(self, blocks: Iterable[np.ndarray]):
        self.blocks = blocks
        self.num_samples = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        for block in self.blocks:
            self.num_samples += len(block)
            yield block


def count_non_finite_error(sound: soundfile.SoundFile, block_frames: int, num_non_finite: int,
                           num_frames: int) -> AudioDecodeError:
    """``non_finite_error`` over the whole file: counts NaN/inf in the rest of ``sound``."""
    while True:
        mono = read_mono(sound, block_frames)
        if not len(mono):
            return non_finite_error(num_non_finite, num_frames, sound.name)
        num_non_finite += len(mono) - np.count_nonzero(np.isfinite(mono))
        num_frames += len(mono)


def count_samples(path: str | Path, sample_rate_hz: int, block_s: float = 60.0) -> int:
    """Samples ``stream_waveform`` yields for ``path``, by decoding it without resampling
    (the frame count in a header is only an estimate for MP3)."""
    with open_sound(path) as sound:
        block_frames = frames_in(block_s, sound.samplerate)
        num_frames = 0
        while len(mono := read_mono(sound, block_frames)):
            num_frames += len(mono)
        return resampled_length(num_frames, sound.samplerate, sample_rate_hz)


def decode_error_message(error: Exception) -> str:
    """The failure message of a decode error: ``"<reason>: <detail>"`` (see
    ``failure_reason``); errors other than ``AudioDecodeError`` are ``unreadable``."""
    if isinstance(error, AudioDecodeError):
        return str(error)
    return f"unreadable: {type(error).__name__}: {error}"


# Training windows (ingest, EDA) and analysis windows (analyze, embed): see stream_windows.
MIN_FRACTION, END_ALIGNED = TAIL_RULES


def stream_windows(blocks: Iterable[np.ndarray], window_samples: int, hop_samples: int,
                   pad_mode: str = "zeros", tail: str = MIN_FRACTION,
                   min_window_fraction: float = 0.5
                   ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Cuts a waveform that arrives in blocks into windows: the one windowing rule of
    ingest, EDA and analyze.

    Windows start every ``hop_samples``; each block's complete windows are yielded as soon
    as the block arrives. ``tail`` says how the end of the recording is covered:

    - ``"min_fraction"`` (training records): the windows reaching past the end, padded by
      ``pad_mode``, while they hold at least ``min_window_fraction`` of real audio (compared
      in float32); the first window of a recording is always kept, so every non-empty
      recording gives at least one window.
    - ``"end_aligned"`` (analysis): if the last full window ends before the recording does,
      one more window ends exactly at the end; a recording shorter than one window gives
      one window at 0, padded by ``pad_mode`` as its training windows were.

    Holds at most one window plus one block of audio, and the recording's first window for
    ``"repeat"`` padding (a padded tail continues with the start of the recording, as
    ``tf.tile`` would).

    Args:
        blocks: float32 blocks ``[samples]`` (e.g. from ``stream_waveform``); their
            concatenation is the recording.
        window_samples: samples per window.
        hop_samples: samples from one window's start to the next; at most
            ``window_samples`` for ``"end_aligned"``.
        pad_mode: ``"zeros"``, or ``"repeat"`` to continue with the recording's start.
        tail: one of ``TAIL_RULES``.
        min_window_fraction: ``"min_fraction"``: the real audio a tail window needs, in
            [0, 1] of a window.

    Yields:
        ``(start_samples, windows)``: int64 ``[k]`` and float32 ``[k, window_samples]``.

    Example:
        >>> blocks = [np.ones(7, np.float32), np.ones(9, np.float32)]
        >>> [starts.tolist() for starts, _ in stream_windows(blocks, 10, 5)]
        [[0, 5], [10]]
        >>> [starts.tolist() for starts, _ in stream_windows(blocks, 10, 5, tail="end_aligned")]
        [[0, 5], [6]]
    """
    check_window_arguments(window_samples, hop_samples, tail)
    buffer = np.zeros(0, np.float32)
    buffer_start = 0  # Sample index (in the recording) of buffer[0].
    head = np.zeros(0, np.float32)  # The recording's first window, for repeat padding.
    next_start = num_samples = 0
    for block in blocks:
        block = np.asarray(block, np.float32)
        if len(head) < window_samples:
            head = np.concatenate([head, block[:window_samples - len(head)]])
        buffer = np.concatenate([buffer, block])
        num_samples += len(block)
        starts = np.arange(next_start, num_samples - window_samples + 1, hop_samples)
        if len(starts):
            yield starts, frame_windows(buffer, starts - buffer_start, window_samples)
            next_start = int(starts[-1]) + hop_samples
        # Keep what the next window needs (end_aligned: and the last window's worth).
        keep_from = next_start if tail == MIN_FRACTION else min(next_start,
                                                                num_samples - window_samples)
        drop = min(max(keep_from - buffer_start, 0), len(buffer))
        buffer, buffer_start = buffer[drop:], buffer_start + drop
    if tail == MIN_FRACTION:
        starts = tail_window_starts(next_start, num_samples, window_samples, hop_samples,
                                    min_window_fraction)
    else:
        starts = end_aligned_tail_start(next_start, num_samples, window_samples, hop_samples)
    if len(starts):
        missing = max(int(starts[-1]) + window_samples - num_samples, 0)
        padded = np.concatenate([buffer, padding(head, missing, pad_mode)])
        yield starts, frame_windows(padded, starts - buffer_start, window_samples)


def check_window_arguments(window_samples: int, hop_samples: int, tail: str) -> None:
    """``ValueError`` for an unknown tail rule, or a hop that ``"end_aligned"`` cannot use."""
    if tail not in TAIL_RULES:
        raise ValueError(f"tail must be one of {TAIL_RULES}. Received: tail={tail!r}")
    if tail == END_ALIGNED and not 0 < hop_samples <= window_samples:
        raise ValueError(f"hop_samples must be in (0, window_samples]. "
                         f"Received: hop_samples={hop_samples}, window_samples={window_samples}")


def padding(head: np.ndarray, num_samples: int, pad_mode: str) -> np.ndarray:
    """``num_samples`` of padding: zeros, or (``"repeat"``) ``head`` tiled from its start."""
    if pad_mode == "repeat":
        return head[np.arange(num_samples) % max(len(head), 1)]
    if pad_mode == "zeros":
        return np.zeros(num_samples, np.float32)
    raise ValueError(f"pad_mode must be 'zeros' or 'repeat'. Received: pad_mode={pad_mode!r}")


def stream_cut_windows(blocks: Iterable[np.ndarray], audio: AudioConfig
                       ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``stream_windows`` with the training windows of ``audio`` (``"min_fraction"``), as
    ``(windows, start_s)``: float32 ``[k, window_samples]`` and ``[k]`` seconds.

    Example:
        >>> for windows, start_s in stream_cut_windows(stream_waveform(path, 32000), audio):
        ...     ...
    """
    for starts, windows in stream_windows(blocks, audio.window_samples, audio.hop_samples,
                                          audio.pad_mode, MIN_FRACTION,
                                          audio.min_window_fraction):
        yield windows, seconds(starts, audio)


def tail_window_starts(first_start: int, num_samples: int, window_samples: int,
                       hop_samples: int, min_window_fraction: float) -> np.ndarray:
    """``"min_fraction"``: starts from ``first_start`` on of the windows reaching past the
    end that are kept: the first window of a recording always, others while their real
    audio is at least ``min_window_fraction`` of a window (compared in float32)."""
    starts = np.arange(first_start, max(num_samples, 1), hop_samples)
    real = np.minimum(num_samples - starts, window_samples).astype(np.float32)
    keep = (starts == 0) | (real / np.float32(window_samples)
                            >= np.float32(min_window_fraction))
    return starts[:np.argmin(keep) if not keep.all() else len(keep)]


def end_aligned_tail_start(next_start: int, num_samples: int, window_samples: int,
                           hop_samples: int) -> np.ndarray:
    """``"end_aligned"``: ``[0]`` for a recording shorter than a window, ``[num_samples -
    window_samples]`` when the last full window ends before the recording, else ``[]``."""
    if num_samples and next_start == 0:
        return np.zeros(1, np.int64)
    if next_start and next_start - hop_samples + window_samples < num_samples:
        return np.array([num_samples - window_samples], np.int64)
    return np.zeros(0, np.int64)


def count_windows(num_samples: int, audio: AudioConfig) -> int:
    """Windows ``stream_cut_windows`` gives for a recording of ``num_samples`` samples."""
    full = max(0, (num_samples - audio.window_samples) // audio.hop_samples + 1)
    return full + len(tail_window_starts(full * audio.hop_samples, num_samples,
                                         audio.window_samples, audio.hop_samples,
                                         audio.min_window_fraction))


def frame_windows(waveform: np.ndarray, offsets: np.ndarray, window: int) -> np.ndarray:
    """``[len(offsets), window]`` copies of ``waveform[offset:offset + window]`` (indexing
    by the ``offsets`` array copies them: one copy of the audio, not two)."""
    return np.lib.stride_tricks.sliding_window_view(waveform, window)[np.asarray(offsets)]


def seconds(start_samples: np.ndarray, audio: AudioConfig) -> np.ndarray:
    """Start samples -> float32 seconds (float32 division, as the records have always held)."""
    return start_samples.astype(np.float32) / np.float32(audio.sample_rate_hz)


def recording_window_blocks(path: str, cfg: Config) -> Iterator[tuple]:
    """One recording's windows, block by block (numpy; may raise ``AudioDecodeError``).

    The recording is streamed (``stream_waveform``, blocks of ``data.decode_block_s``) and
    cut by ``stream_cut_windows``, so only one block is held, however long it is. With
    ``first`` selection, decoding stops after the windows kept. With ``random`` selection the
    number of windows must be known first: a recording of several blocks is decoded once
    more without resampling to count its samples.

    Yields:
        ``(windows float32 [k, window_samples], start_s [k], index int64 [k], num_windows,
        audio_s)``: ``index`` numbers the windows in the recording, ``num_windows`` is their
        total (-1 unless ``random``), ``audio_s`` the seconds decoded for this block.
    """
    audio, data = cfg.audio, cfg.data
    decoded = stream_waveform(path, audio.sample_rate_hz, data.decode_block_s)
    num_windows = -1
    if data.window_selection == "random":
        first_blocks = list(itertools.islice(decoded, 2))
        num_samples = (len(first_blocks[0]) if len(first_blocks) == 1
                       else count_samples(path, audio.sample_rate_hz, data.decode_block_s))
        num_windows = count_windows(num_samples, audio)
        decoded = itertools.chain(first_blocks, decoded)
    limit = data.windows_per_recording if data.window_selection == "first" else None
    blocks = CountedBlocks(decoded)
    index, reported = 0, 0
    for windows, start_s in stream_cut_windows(blocks, audio):
        if limit is not None:
            windows, start_s = windows[:limit - index], start_s[:limit - index]
        yield (windows, start_s, np.arange(index, index + len(windows)), num_windows,
               np.float32((blocks.num_samples - reported) / audio.sample_rate_hz))
        index, reported = index + len(windows), blocks.num_samples
        if limit is not None and index >= limit:
            return


def recording_elements(path: str, cfg: Config) -> Iterator[tuple]:
    """``recording_window_blocks`` as elements that never raise: each block gets ``error``
    (empty, or the failure message, as UTF-8 bytes) and ``last`` (True on the recording's final
    element). A failure yields one more element: no windows, the error, ``last``."""
    previous = None
    try:
        for block in recording_window_blocks(path, cfg):
            if previous is not None:
                yield (*previous, b"", False)
            previous = block
    except Exception as error:  # Reported per file by the caller, never dropped.
        if previous is not None:
            yield (*previous, b"", False)
        yield failure_element(decode_error_message(error), cfg.audio.window_samples)
        return
    if previous is None:  # Cannot happen for audio (>= 1 window); keep the stream well formed.
        previous = (np.zeros([0, cfg.audio.window_samples], np.float32),
                    np.zeros([0], np.float32), np.zeros([0], np.int64), -1, np.float32(0))
    yield (*previous, b"", True)


def failure_element(message: str, window_samples: int) -> tuple:
    """The element of ``recording_elements`` that ends a failed recording: no windows,
    ``message`` (``"<reason>: <detail>"``), ``last``."""
    return (np.zeros([0, window_samples], np.float32), np.zeros([0], np.float32),
            np.zeros([0], np.int64), -1, np.float32(0), message.encode("utf-8"), True)
