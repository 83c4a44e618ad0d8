"""Offline speech: one WAV per announcement — chime, Japanese, pause, English.

* Japanese: Open JTalk (Debian ``open-jtalk``) with the NAIST dictionary
  (``open-jtalk-mecab-naist-jdic``) and an HTS voice (by default Debian's
  ``hts-voice-nitech-jp-atr503-m001``, in contrib: docs/voice.md).  It writes
  48 kHz mono.
* English: espeak-ng (22.05 kHz mono).
* SoX converts each part to 48 kHz / 16 bit / mono, normalises it to -1 dBFS,
  pads the pauses and joins chime + Japanese + English into one file, at the
  configured volume.
* The chime is made in Python (drivers/voice/chime.py) once per synthesizer.

Text is given to both engines on stdin, never on the command line (a counter
name starting with "-" is not an option).  Every subprocess has a timeout.

What is missing is reported by :meth:`Synthesizer.check` (for health) and an
announcement is made from what is there: without the Japanese voice it is the
chime and the English; without SoX only the chime.  Nothing raises unless not
even a chime can be produced.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import threading
import wave
from dataclasses import dataclass, field
from pathlib import Path

from drivers.base import Closeable
from drivers.errors import DriverError
from drivers.voice import chime as _chime
from drivers.voice.text import Announcement

logger = logging.getLogger(__name__)

DEFAULT_DICTIONARY = Path("/var/lib/mecab/dic/open-jtalk/naist-jdic")
DEFAULT_VOICE = Path("/usr/share/hts-voice/nitech-jp-atr503-m001/nitech_jp_atr503_m001.htsvoice")
RATE = _chime.RATE
#: Silence after the Japanese, before the English (seconds).
PAUSE_S = 0.6
#: Silence at the very end, so a player that cuts the last buffer short loses nothing.
END_S = 0.2


class VoiceError(DriverError):
    """Speech could not be made or played.  ``reason`` is a short stable code."""

    REASONS = ("missing_binary", "missing_dictionary", "missing_voice", "failed", "timeout", "no_audio", "closed")

    def __init__(self, reason: str, message: str) -> None:
        assert reason in self.REASONS, reason
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Capabilities:
    """What this machine can say.  ``None`` means fine; otherwise why not."""

    japanese: str | None
    english: str | None  # also set (to "disabled") when English is switched off
    sox: str | None
    chime: bool

    @property
    def ok(self) -> bool:
        return self.japanese is None and self.sox is None and self.english in (None, "disabled")

    def health(self) -> tuple[str, str | None, str | None]:
        """(status, reason, message) as the bus's PeripheralHealth wants it."""
        if self.sox is not None:
            return ("error", "sox_missing", f"{self.sox}; only the chime can be played")
        if self.japanese is not None:
            return ("error", "ja_voice_missing", f"{self.japanese}; announcing chime + English only")
        if self.english not in (None, "disabled"):
            return ("warning", "en_voice_missing", f"{self.english}; announcing in Japanese only")
        return ("ok", None, None)


@dataclass(frozen=True)
class Synthesized:
    """A WAV made by :meth:`Synthesizer.synthesize`."""

    path: Path
    duration_s: float
    #: Each part in the file and its length in seconds, in order ("chime", "ja", "en").
    parts: dict[str, float] = field(default_factory=dict)
    #: Parts that should have been there and were not (reason text per part).
    problems: dict[str, str] = field(default_factory=dict)


def wav_duration(path: Path) -> float:
    """Length of a PCM WAV in seconds (raises VoiceError if it is not one)."""
    try:
        with wave.open(str(path), "rb") as w:
            return w.getnframes() / w.getframerate()
    except (OSError, EOFError, wave.Error) as exc:
        raise VoiceError("failed", f"not a WAV file: {path.name}: {exc}") from exc


class Synthesizer(Closeable):
    """Makes announcement WAVs.  Thread-safe for one caller at a time (the
    announcer's worker).

    Args:
        dictionary: Open JTalk's dictionary folder (holds ``sys.dic``).
        voice: the HTS voice file (``.htsvoice``).
        espeak_voice: espeak-ng voice of the English part, e.g. "en-us", "en-gb".
        english: add the English sentence after the Japanese.
        chime: start with the chime.
        volume: linear gain of the whole announcement after normalising,
            0 < volume ≤ 1.
        speed: Open JTalk's speech rate (1.0 normal).
        workdir: where the chime and WAVs are written (default: a private
            temporary folder, removed by :meth:`close`; /tmp is a tmpfs on
            trixie, so nothing wears the SD card).
        open_jtalk, espeak, sox: the programs (names looked up on PATH, or paths).
        timeout_s: longest run of one subprocess.
    """

    def __init__(
        self,
        *,
        dictionary: Path = DEFAULT_DICTIONARY,
        voice: Path = DEFAULT_VOICE,
        espeak_voice: str = "en-us",
        english: bool = True,
        chime: bool = True,
        volume: float = 0.8,
        speed: float = 1.0,
        workdir: Path | None = None,
        open_jtalk: str = "open_jtalk",
        espeak: str = "espeak-ng",
        sox: str = "sox",
        timeout_s: float = 20.0,
    ) -> None:
        if not 0 < volume <= 1:
            raise ValueError(f"volume must be in (0, 1], not {volume}")
        if not 0.3 <= speed <= 3:
            raise ValueError(f"speed must be in [0.3, 3], not {speed}")
        self._lock = threading.Lock()
        self._closed = False
        self.dictionary = Path(dictionary)
        self.voice = Path(voice)
        self.espeak_voice = espeak_voice
        self.english = english
        self.chime = chime
        self.volume = volume
        self.speed = speed
        self.programs = {"open_jtalk": open_jtalk, "espeak-ng": espeak, "sox": sox}
        self.timeout_s = timeout_s
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="madoguchi-voice-")) if workdir is None else Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._count = 0
        self._chime_path: Path | None = None
        self._espeak_checked: str | None | bool = False  # False: not checked yet

    # ------------------------------------------------------------ checks
    def _which(self, name: str) -> str | None:
        return shutil.which(self.programs[name])

    def check(self) -> Capabilities:
        """What can be said now (cheap: file checks, and one espeak-ng run the
        first time to see that its voice exists)."""
        if self._which("open_jtalk") is None:
            japanese = f"{self.programs['open_jtalk']} not installed (apt-get install open-jtalk)"
        elif not (self.dictionary / "sys.dic").is_file():
            japanese = f"Open JTalk dictionary not found at {self.dictionary} (apt-get install open-jtalk-mecab-naist-jdic)"
        elif not self.voice.is_file() or not os.access(self.voice, os.R_OK):
            japanese = f"HTS voice not found at {self.voice} (docs/voice.md)"
        else:
            japanese = None
        if not self.english:
            english = "disabled"
        elif self._which("espeak-ng") is None:
            english = f"{self.programs['espeak-ng']} not installed (apt-get install espeak-ng)"
        else:
            english = self._espeak_voice_problem()
        sox = None if self._which("sox") else f"{self.programs['sox']} not installed (apt-get install sox)"
        return Capabilities(japanese=japanese, english=english, sox=sox, chime=self.chime)

    def _espeak_voice_problem(self) -> str | None:
        if self._espeak_checked is False:
            try:
                self._run([self.programs["espeak-ng"], "-q", "-v", self.espeak_voice, "--stdin"], b"ok")
                self._espeak_checked = None
            except VoiceError as exc:
                self._espeak_checked = f"espeak-ng voice {self.espeak_voice!r} unusable: {exc.message}"
        return self._espeak_checked  # type: ignore[return-value]

    # ------------------------------------------------------------ subprocesses
    def _run(self, argv: list[str], stdin: bytes | None = None) -> None:
        try:
            proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=self.timeout_s, check=False)
        except FileNotFoundError as exc:
            raise VoiceError("missing_binary", f"{argv[0]} not found") from exc
        except subprocess.TimeoutExpired as exc:
            raise VoiceError("timeout", f"{Path(argv[0]).name} took more than {self.timeout_s:.0f} s") from exc
        except OSError as exc:
            raise VoiceError("failed", f"{Path(argv[0]).name}: {exc}") from exc
        if proc.returncode != 0:
            err = (proc.stderr or proc.stdout).decode("utf-8", "replace").strip().splitlines()
            raise VoiceError("failed", f"{Path(argv[0]).name} exited with {proc.returncode}: {' / '.join(err[-2:])[:160]}")

    def _produced(self, path: Path, what: str) -> float:
        if not path.is_file() or path.stat().st_size <= 44:
            raise VoiceError("no_audio", f"{what} produced no audio")
        return wav_duration(path)

    def japanese_wav(self, text: str, out: Path) -> float:
        """Speak ``text`` (one line) with Open JTalk into ``out``; its length.

        Raises:
            VoiceError: missing_binary / missing_dictionary / missing_voice,
                failed, timeout, no_audio.
        """
        if not (self.dictionary / "sys.dic").is_file():
            raise VoiceError("missing_dictionary", f"Open JTalk dictionary not found at {self.dictionary}")
        if not self.voice.is_file():
            raise VoiceError("missing_voice", f"HTS voice not found at {self.voice}")
        self._run([self.programs["open_jtalk"], "-x", str(self.dictionary), "-m", str(self.voice),
                   "-r", f"{self.speed:.2f}", "-ow", str(out)], (text + "\n").encode("utf-8"))
        return self._produced(out, "open_jtalk")

    def english_wav(self, text: str, out: Path) -> float:
        """Speak ``text`` with espeak-ng into ``out``; its length (VoiceError as above)."""
        self._run([self.programs["espeak-ng"], "-v", self.espeak_voice, "-w", str(out), "--stdin"],
                  text.encode("utf-8"))
        return self._produced(out, "espeak-ng")

    def chime_wav(self) -> Path:
        """The chime (made once, then reused)."""
        with self._lock:
            if self._chime_path is None or not self._chime_path.is_file():
                self._chime_path = _chime.write_chime(self.workdir / "chime.wav")
            return self._chime_path

    def _conform(self, src: Path, dst: Path, pad_after_s: float) -> float:
        """``src`` as 48 kHz/16 bit/mono, normalised to -1 dBFS, with silence after."""
        self._run([self.programs["sox"], "-q", str(src), "-r", str(RATE), "-c", "1", "-b", "16", str(dst),
                   "norm", "-1", "pad", "0", f"{pad_after_s:.2f}"])
        return self._produced(dst, "sox")

    # ------------------------------------------------------------ the announcement
    def synthesize(self, announcement: Announcement, out: Path | None = None) -> Synthesized:
        """Make the announcement's WAV (``out``, or a new file in the work folder).

        Parts that cannot be made are left out and listed in ``problems``.

        Raises:
            VoiceError: "closed", or "no_audio" when nothing at all could be made.
        """
        if self.closed:
            raise VoiceError("closed", "the synthesizer is closed")
        with self._lock:
            self._count += 1
            n = self._count
        stem = self.workdir / f"a{n:06d}"
        out = Path(out) if out is not None else stem.with_suffix(".wav")
        caps = self.check()
        parts: list[tuple[str, Path, float]] = []
        problems: dict[str, str] = {}
        scratch: list[Path] = []
        try:
            if self.chime:
                path = self.chime_wav()
                parts.append(("chime", path, wav_duration(path)))
            if caps.sox is not None:
                problems["sox"] = caps.sox
            else:
                speech = []
                if caps.japanese is None:
                    speech.append(("ja", announcement.japanese(), self.japanese_wav))
                else:
                    problems["ja"] = caps.japanese
                if self.english and caps.english is None:
                    speech.append(("en", announcement.english(), self.english_wav))
                elif self.english:
                    problems["en"] = str(caps.english)
                for i, (name, text, make) in enumerate(speech):
                    raw, part = Path(f"{stem}-{name}-raw.wav"), Path(f"{stem}-{name}.wav")
                    scratch += [raw, part]
                    try:
                        make(text, raw)
                        last = i == len(speech) - 1
                        parts.append((name, part, self._conform(raw, part, END_S if last else PAUSE_S)))
                    except VoiceError as exc:
                        logger.error("voice: %s part of %s not made: %s", name, announcement.describe(), exc)
                        problems[name] = str(exc)
            if not parts:
                raise VoiceError("no_audio", ("nothing to play: " + "; ".join(problems.values())) if problems
                                 else "nothing to play (chime off, no speech)")
            if caps.sox is not None:  # without sox there is no speech: the chime alone, as made
                shutil.copyfile(parts[0][1], out)
            else:
                self._run([self.programs["sox"], "-q", *[str(p) for _, p, _ in parts], str(out),
                           "vol", f"{self.volume:.3f}"])
            duration = self._produced(out, "sox")
        finally:
            for path in scratch:
                path.unlink(missing_ok=True)
        return Synthesized(path=out, duration_s=duration, parts={name: d for name, _, d in parts}, problems=problems)

    def _close(self) -> None:
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
