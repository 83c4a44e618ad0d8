"""Offline voice announcements for the lobby (docs/voice.md).

* :class:`Announcement`: what is said ("受付番号 123番の方、3番窓口へお越しください。"
  then "Ticket number 123, please come to Counter 3.").
* :class:`Synthesizer`: one WAV per announcement — chime, Open JTalk, pause,
  espeak-ng — joined with SoX; :meth:`Synthesizer.check` says what is missing.
* :class:`Announcer`: a strictly serial, bounded, de-duplicating queue played
  with aplay (or any player command).
* ``python -m drivers.voice.record``: a fake loudspeaker that records what it
  is given (machines without a sound card, tests).

Every error is a :class:`VoiceError`.
"""

from drivers.voice.player import DEFAULT_COMMAND, Announcer, AnnouncerStatus, Played
from drivers.voice.synth import (
    DEFAULT_DICTIONARY,
    DEFAULT_VOICE,
    Capabilities,
    Synthesized,
    Synthesizer,
    VoiceError,
    wav_duration,
)
from drivers.voice.text import Announcement, speakable

__all__ = [
    "DEFAULT_COMMAND",
    "DEFAULT_DICTIONARY",
    "DEFAULT_VOICE",
    "Announcement",
    "Announcer",
    "AnnouncerStatus",
    "Capabilities",
    "Played",
    "Synthesized",
    "Synthesizer",
    "VoiceError",
    "speakable",
    "wav_duration",
]
