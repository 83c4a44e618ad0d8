"""The chime before an announcement: a two-tone ピンポン made offline.

A descending major third (E5 659.25 Hz, then C5 523.25 Hz), each a sine with a
quieter second harmonic and an exponential decay, like the chimes of station
and office PA systems.  Made in Python (no sound file to ship or license),
written once per process to the synthesizer's work folder.
"""

from __future__ import annotations

import array
import math
import sys
import wave
from pathlib import Path

RATE = 48_000  # Open JTalk's rate: everything is joined at 48 kHz, 16 bit, mono
HIGH_HZ = 659.25  # E5 (ピン)
LOW_HZ = 523.25  # C5 (ポン)
HIGH_S = 0.5
LOW_S = 1.0
TAIL_S = 0.3  # silence after the chime, before the speech
PEAK = 0.5  # of full scale


def _tone(freq: float, seconds: float, decay_s: float, rate: int) -> list[float]:
    n = int(seconds * rate)
    attack = int(0.005 * rate)
    release = int(0.03 * rate)
    out = []
    for i in range(n):
        t = i / rate
        env = math.exp(-t / decay_s)
        if i < attack:
            env *= i / attack
        if i > n - release:
            env *= (n - i) / release
        w = 2 * math.pi * freq * t
        out.append(env * (math.sin(w) + 0.25 * math.sin(2 * w)) / 1.25)
    return out


def chime_samples(rate: int = RATE) -> array.array:
    """The chime as signed 16-bit samples at ``rate`` Hz."""
    samples = _tone(HIGH_HZ, HIGH_S, 0.6, rate) + _tone(LOW_HZ, LOW_S, 0.4, rate) + [0.0] * int(TAIL_S * rate)
    pcm = array.array("h", (round(s * PEAK * 32767) for s in samples))
    if sys.byteorder != "little":  # WAV is little-endian
        pcm.byteswap()
    return pcm


def write_chime(path: Path, rate: int = RATE) -> Path:
    """Write the chime to ``path`` (WAV, mono, 16 bit); atomically."""
    tmp = path.with_name(path.name + ".part")
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(chime_samples(rate).tobytes())
    tmp.replace(path)
    return path


DURATION_S = HIGH_S + LOW_S + TAIL_S
