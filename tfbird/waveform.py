"""Audio files -> mono float32 waveforms at the model's sample rate, and waveforms -> windows.

Decoding uses soundfile (libsndfile: WAV, FLAC, OGG Vorbis, Opus, MP3, ...), downmixes by the
channel mean and resamples with soxr's high quality mode: the same steps and defaults as
``librosa.load(path, sr=..., mono=True)``, which is the reference. Decoding is plain numpy (it
runs inside tf.data through ``tf.numpy_function``; libsndfile and soxr release the GIL). Cutting
windows is graph code.

Example:
    >>> waveform = load_waveform("call.flac", sample_rate_hz=32000)
    >>> windows, starts = cut_windows(waveform, AudioConfig())
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import soundfile
import soxr
import tensorflow as tf

from tfbird.config import AudioConfig


class AudioDecodeError(ValueError):
    """A file that cannot become a waveform.

    The message is ``"<reason>: <detail naming the file>"``; the reason is one of
    ``DECODE_FAILURE_REASONS``, and ``failure_reason(message)`` gets it back.
    """


DECODE_FAILURE_REASONS = ("file missing", "empty", "unreadable", "no audio after decode",
                          "all-NaN", "non-finite")


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


def cut_windows(waveform: tf.Tensor, audio: AudioConfig) -> tuple[tf.Tensor, tf.Tensor]:
    """Cuts a waveform into windows of ``audio.window_s`` every ``audio.hop_s`` (graph code).

    A window reaching past the end is filled by ``audio.pad_mode`` (zeros, or the recording
    repeated). Tail windows holding less than ``audio.min_window_fraction`` of real audio are
    dropped, but the first window is always kept, so every non-empty recording gives at
    least one window.

    Args:
        waveform: float32 ``[samples]`` at ``audio.sample_rate_hz``.
        audio: window length, hop and padding rule.

    Returns:
        ``(windows, start_s)``: float32 ``[num_windows, window_samples]`` and the start time of
        each window in seconds ``[num_windows]``.
    """
    waveform = tf.convert_to_tensor(waveform, tf.float32)
    window, hop = audio.window_samples, audio.hop_samples
    num_samples = tf.shape(waveform)[0]
    starts = tf.range(0, tf.maximum(num_samples, 1), hop)
    real_fraction = tf.cast(tf.minimum(num_samples - starts, window), tf.float32) / window
    keep = tf.logical_or(tf.range(tf.size(starts)) == 0,
                         real_fraction >= audio.min_window_fraction)
    num_windows = tf.reduce_sum(tf.cast(keep, tf.int32))
    needed = (num_windows - 1) * hop + window
    padded = pad_to_length(waveform, needed, audio.pad_mode)
    windows = tf.signal.frame(padded, window, hop)[:num_windows]
    start_s = tf.cast(starts[:num_windows], tf.float32) / audio.sample_rate_hz
    return windows, start_s


def pad_to_length(waveform: tf.Tensor, length: tf.Tensor, pad_mode: str) -> tf.Tensor:
    """Pads (``"zeros"``) or tiles (``"repeat"``) ``waveform`` to at least ``length`` samples."""
    num_samples = tf.shape(waveform)[0]
    if pad_mode == "repeat":
        repeats = (length + num_samples - 1) // tf.maximum(num_samples, 1)
        return tf.tile(waveform, [tf.maximum(repeats, 1)])
    if pad_mode == "zeros":
        return tf.pad(waveform, [[0, tf.maximum(length - num_samples, 0)]])
    raise ValueError(f"pad_mode must be 'zeros' or 'repeat'. Received: pad_mode={pad_mode!r}")


def stream_cut_windows(blocks: Iterable[np.ndarray], audio: AudioConfig
                       ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``cut_windows`` over a waveform that arrives in blocks (numpy), window for window.

    Yields each block's complete windows as soon as they are complete, and at the end the
    tail windows that ``cut_windows`` keeps, padded by ``audio.pad_mode``. Holds at most one
    window plus one block of audio, and the first window of the recording for ``repeat``
    padding (a padded tail continues with the start of the recording, as ``tf.tile``).

    Args:
        blocks: float32 blocks ``[samples]`` at ``audio.sample_rate_hz`` (e.g. from
            ``stream_waveform``); their concatenation is the recording.
        audio: window length, hop, padding rule and ``min_window_fraction``.

    Yields:
        ``(windows, start_s)``: float32 ``[k, window_samples]`` and ``[k]`` (seconds), the
        same values as ``cut_windows`` of the whole recording.

    Example:
        >>> for windows, start_s in stream_cut_windows(stream_waveform(path, 32000), audio):
        ...     ...
    """
    window, hop = audio.window_samples, audio.hop_samples
    buffer = np.zeros(0, np.float32)
    buffer_start = 0  # Sample index (in the recording) of buffer[0].
    head = np.zeros(0, np.float32)  # The recording's first window, for repeat padding.
    next_start = num_samples = 0
    for block in blocks:
        block = np.asarray(block, np.float32)
        if len(head) < window:
            head = np.concatenate([head, block[:window - len(head)]])
        buffer = np.concatenate([buffer, block])
        num_samples += len(block)
        starts = np.arange(next_start, num_samples - window + 1, hop)
        if len(starts):
            yield frame_windows(buffer, starts - buffer_start, window), seconds(starts, audio)
            next_start = int(starts[-1]) + hop
        drop = min(next_start - buffer_start, len(buffer))
        buffer, buffer_start = buffer[drop:], buffer_start + drop
    starts = tail_window_starts(next_start, num_samples, audio)
    if len(starts):
        missing = int(starts[-1]) + window - num_samples
        if audio.pad_mode == "repeat":
            padding = head[np.arange(missing) % max(len(head), 1)]
        else:
            padding = np.zeros(missing, np.float32)
        padded = np.concatenate([buffer, padding])
        yield frame_windows(padded, starts - buffer_start, window), seconds(starts, audio)


def tail_window_starts(first_start: int, num_samples: int, audio: AudioConfig) -> np.ndarray:
    """Starts from ``first_start`` on of the windows reaching past the end that
    ``cut_windows`` keeps: the first window of a recording always, others while their real
    audio is at least ``audio.min_window_fraction`` (compared in float32, as the graph)."""
    starts = np.arange(first_start, max(num_samples, 1), audio.hop_samples)
    real = np.minimum(num_samples - starts, audio.window_samples).astype(np.float32)
    keep = (starts == 0) | (real / np.float32(audio.window_samples)
                            >= np.float32(audio.min_window_fraction))
    return starts[:np.argmin(keep) if not keep.all() else len(keep)]


def count_windows(num_samples: int, audio: AudioConfig) -> int:
    """Windows ``cut_windows`` gives for a recording of ``num_samples`` samples."""
    full = max(0, (num_samples - audio.window_samples) // audio.hop_samples + 1)
    return full + len(tail_window_starts(full * audio.hop_samples, num_samples, audio))


def frame_windows(waveform: np.ndarray, offsets: np.ndarray, window: int) -> np.ndarray:
    """``[len(offsets), window]`` copies of ``waveform[offset:offset + window]``."""
    return np.lib.stride_tricks.sliding_window_view(waveform, window)[offsets].copy()


def seconds(start_samples: np.ndarray, audio: AudioConfig) -> np.ndarray:
    """Start samples -> float32 seconds, rounded as ``cut_windows`` (float32 division)."""
    return start_samples.astype(np.float32) / np.float32(audio.sample_rate_hz)
