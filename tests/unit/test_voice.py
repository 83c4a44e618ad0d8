"""drivers/voice: real Open JTalk, espeak-ng, SoX and aplay on this machine.

The announcement's WAV is checked as audio (length, level, format, the chime's
frequencies before the speech), not as "a file exists".  The queue is checked
with real player processes: a shell command held by a gate file, the
recording fake loudspeaker, and aplay on ALSA's null device.
"""

from __future__ import annotations

import array
import math
import re
import shutil
import subprocess
import sys
import time
import wave
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bus import encode
from bus.models import CallEntry, LobbyBoard
from drivers.voice import (
    DEFAULT_DICTIONARY,
    DEFAULT_VOICE,
    Announcement,
    Announcer,
    Synthesizer,
    VoiceError,
)
from drivers.voice import chime as chime_mod
from drivers.voice.record import plays
from edge.lobby import LobbyRole
from tests.support.procs import wait_for

pytestmark = pytest.mark.timeout(60)

HAVE_TOOLS = all(shutil.which(p) for p in ("open_jtalk", "espeak-ng", "sox", "aplay")) and DEFAULT_VOICE.is_file() \
    and (DEFAULT_DICTIONARY / "sys.dic").is_file()
needs_tools = pytest.mark.skipif(not HAVE_TOOLS, reason="open-jtalk + voice, espeak-ng, sox, alsa-utils: ./dev test installs them")


def read_wav(path: Path) -> tuple[array.array, int, int, int]:
    """(samples as floats -1..1 in an array of 'h', rate, channels, sample width)."""
    with wave.open(str(path), "rb") as w:
        rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
        pcm = array.array("h", w.readframes(w.getnframes()))
    if sys.byteorder != "little":
        pcm.byteswap()
    return pcm, rate, channels, width


def rms(pcm: array.array, start_s: float, end_s: float, rate: int) -> float:
    chunk = pcm[int(start_s * rate):int(end_s * rate)]
    return math.sqrt(sum(s * s for s in chunk) / max(1, len(chunk))) / 32768


def tone_power(pcm: array.array, start_s: float, end_s: float, rate: int, freq: float) -> float:
    """Goertzel: the power of ``freq`` in a window (relative units)."""
    chunk = pcm[int(start_s * rate):int(end_s * rate)]
    coeff = 2 * math.cos(2 * math.pi * freq / rate)
    s1 = s2 = 0.0
    for x in chunk:
        s1, s2 = x + coeff * s1 - s2, s1
    return (s1 * s1 + s2 * s2 - coeff * s1 * s2) / max(1, len(chunk)) ** 2


# ---------------------------------------------------------------- text
def test_the_sentences():
    a = Announcement(ticket=123, counter="3", counter_ja="3番窓口", counter_en="Counter 3")
    assert a.japanese() == "受付番号 123番の方、3番窓口へお越しください。"
    assert a.english() == "Ticket number 123, please come to Counter 3."
    r = Announcement(ticket=7, counter="1", counter_ja="1番窓口", counter_en="Counter 1", recall=True)
    assert r.japanese() == "再度お呼び出しいたします。受付番号 7番の方、1番窓口へお越しください。"
    assert r.english() == "Calling again: ticket number 7, please come to Counter 1."
    assert r.key != Announcement(7, "1", "1番窓口", "Counter 1").key  # a recall is not a duplicate of the call


def test_counter_names_are_made_speakable():
    # Full-width digits, a space before 番 (read digit by digit), a line break
    # (Open JTalk speaks only the first line), a control character.
    a = Announcement(ticket=5, counter="12", counter_ja="１２ 番\n窓口\x07", counter_en="")
    assert a.japanese() == "受付番号 5番の方、12番 窓口へお越しください。"
    assert a.english() == "Ticket number 5, please come to counter 12."  # no English name: the counter id
    assert Announcement(ticket=5, counter="x", counter_ja="", counter_en="").japanese() == \
        "受付番号 5番の方、x番窓口へお越しください。"
    assert len(Announcement(5, "1", "長" * 80).japanese()) < 80  # names are bounded
    for bad in (0, 10000, True, "12"):
        with pytest.raises(ValueError):
            Announcement(ticket=bad, counter="1", counter_ja="1番窓口")


@needs_tools
def test_open_jtalk_reads_the_ticket_number_as_one_number():
    """Why there is no space between the number and 番 (docs/voice.md)."""

    def reading(text: str) -> str:
        trace = subprocess.run(
            ["open_jtalk", "-x", str(DEFAULT_DICTIONARY), "-m", str(DEFAULT_VOICE), "-ow", "/dev/null", "-ot", "/dev/stdout"],
            input=(text + "\n").encode(), capture_output=True, timeout=20, check=True).stdout.decode()
        block = trace.split("[Text analysis result]")[1].split("[Output label]")[0]
        return "".join(line.split(",")[9] for line in block.strip().splitlines() if line.count(",") > 9)

    ours = reading(Announcement(123, "3", "3番窓口").japanese())
    assert "ヒャクニジューサンバン" in ours and "サンバンマドグチ" in ours, ours
    assert "イチニーサン" in reading("受付番号 123 番の方")  # what a space would do


# ---------------------------------------------------------------- synthesis
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    s = Synthesizer(workdir=tmp_path_factory.mktemp("voice"))
    yield s
    s.close()


@pytest.fixture(scope="module")
def made(synth):
    return synth.synthesize(Announcement(ticket=123, counter="3", counter_ja="3番窓口", counter_en="Counter 3"))


@needs_tools
def test_everything_needed_is_there(synth):
    caps = synth.check()
    assert (caps.japanese, caps.english, caps.sox) == (None, None, None)
    assert caps.health() == ("ok", None, None)


@needs_tools
def test_the_announcement_is_one_wav_of_real_speech(made):
    pcm, rate, channels, width = read_wav(made.path)
    assert (rate, channels, width) == (48_000, 1, 2)
    duration = len(pcm) / rate
    assert duration == pytest.approx(made.duration_s, abs=0.01)
    assert list(made.parts) == ["chime", "ja", "en"] and not made.problems
    assert made.parts["chime"] == pytest.approx(chime_mod.DURATION_S, abs=0.01)
    assert made.parts["ja"] > 2.0  # 受付番号 ひゃくにじゅうさん番の方、… is ~6 s
    assert made.parts["en"] > 1.5
    assert duration == pytest.approx(sum(made.parts.values()), abs=0.02)
    assert 8.0 < duration < 30.0
    ja_start = made.parts["chime"]
    en_start = ja_start + made.parts["ja"]
    assert rms(pcm, 0, duration, rate) > 0.03  # normalised speech at volume 0.8 is ~0.08 (-22 dBFS)
    assert rms(pcm, ja_start, en_start, rate) > 0.03  # the Japanese is really there...
    assert rms(pcm, en_start, duration, rate) > 0.03  # ...and the English
    assert max(abs(s) for s in pcm) / 32768 < 0.9  # no clipping: -1 dBFS × volume


@needs_tools
def test_the_chime_comes_first_then_a_gap_then_speech(made):
    pcm, rate, _, _ = read_wav(made.path)
    high, low = chime_mod.HIGH_HZ, chime_mod.LOW_HZ
    # 0–0.3 s: ピン (E5), not ポン (C5); 0.6–0.9 s: ポン.
    assert tone_power(pcm, 0.0, 0.3, rate, high) > 20 * tone_power(pcm, 0.0, 0.3, rate, low)
    assert tone_power(pcm, 0.6, 0.9, rate, low) > 20 * tone_power(pcm, 0.6, 0.9, rate, high)
    assert rms(pcm, 0.0, 0.3, rate) > 0.05
    chime_end = chime_mod.HIGH_S + chime_mod.LOW_S
    assert rms(pcm, chime_end, chime_end + chime_mod.TAIL_S, rate) < 0.001  # the gap before the voice
    assert rms(pcm, made.parts["chime"], made.parts["chime"] + 2.0, rate) > 0.03  # then speech


@needs_tools
def test_without_the_japanese_voice_it_is_chime_and_english(tmp_path):
    with Synthesizer(voice=tmp_path / "missing.htsvoice", workdir=tmp_path) as s:
        caps = s.check()
        assert "HTS voice not found" in caps.japanese
        status, reason, message = caps.health()
        assert (status, reason) == ("error", "ja_voice_missing") and "chime + English" in message
        made = s.synthesize(Announcement(9, "2", "2番窓口", "Counter 2"))
        assert list(made.parts) == ["chime", "en"] and "ja" in made.problems
        with pytest.raises(VoiceError) as exc:
            s.japanese_wav("テスト", tmp_path / "x.wav")
        assert exc.value.reason == "missing_voice"


@needs_tools
def test_missing_programs_are_voice_errors(tmp_path):
    with Synthesizer(open_jtalk=str(tmp_path / "no-open_jtalk"), espeak=str(tmp_path / "no-espeak"),
                     sox=str(tmp_path / "no-sox"), workdir=tmp_path) as s:
        caps = s.check()
        assert "not installed" in caps.japanese and "not installed" in caps.english and "not installed" in caps.sox
        assert s.check().health()[:2] == ("error", "sox_missing")
        for make in (s.japanese_wav, s.english_wav):
            with pytest.raises(VoiceError) as exc:
                make("test", tmp_path / "x.wav")
            assert exc.value.reason == "missing_binary"
        made = s.synthesize(Announcement(9, "2", "2番窓口", "Counter 2"))  # still the chime
        assert list(made.parts) == ["chime"] and made.duration_s == pytest.approx(chime_mod.DURATION_S, abs=0.01)
    with Synthesizer(sox=str(tmp_path / "no-sox"), chime=False, workdir=tmp_path) as s:
        with pytest.raises(VoiceError) as exc:
            s.synthesize(Announcement(9, "2", "2番窓口"))
        assert exc.value.reason == "no_audio"
    with Synthesizer(espeak_voice="xx-nope", workdir=tmp_path) as s:
        assert s.check().health()[:2] == ("warning", "en_voice_missing")


# ---------------------------------------------------------------- the queue
@pytest.fixture
def chime_only(tmp_path):
    """A synthesizer without SoX makes only the chime: fast, for queue tests."""
    s = Synthesizer(sox=str(tmp_path / "no-sox"), english=False, workdir=tmp_path / "w")
    yield s
    s.close()


def gated_player(tmp_path: Path) -> tuple[list[str], Path, Path]:
    """A player that logs each WAV, then waits until ``gate`` exists."""
    gate, log = tmp_path / "gate", tmp_path / "played.log"
    script = 'echo "start $1" >> "$2"; while [ ! -e "$3" ]; do sleep 0.02; done; echo "end $1" >> "$2"'
    return ["sh", "-c", script, "sh", "{wav}", str(log), str(gate)], gate, log


def test_one_at_a_time_in_order_bounded_recall_kept(chime_only, tmp_path):
    command, gate, log = gated_player(tmp_path)
    calls = [Announcement(n, "1", "1番窓口", recall=(n == 3)) for n in (1, 2, 3, 4)]
    with Announcer(chime_only, command=command, max_queue=2, dedupe_s=5) as announcer:
        announcer.announce(calls[0])
        wait_for(lambda: log.exists() and "start" in log.read_text(), what="the first play")
        for a in calls[1:]:  # 2 (call), 3 (recall), 4 (call): the queue holds 2
            assert announcer.announce(a)
        assert announcer.status().queued == 2 and announcer.dropped == 1
        assert announcer.health()[2].endswith("queue 2/2, played 0")
        time.sleep(0.3)
        lines = log.read_text().splitlines()
        assert len(lines) == 1 and lines[0].startswith("start")  # nothing else started while one plays
        gate.touch()
        assert announcer.wait_idle(10)
        done = [p.announcement.ticket for p in announcer.history]
        assert done == [1, 3, 4]  # 2, the oldest waiting first call, was dropped; the recall kept
        assert all(p.ok and p.parts == ("chime",) for p in announcer.history)
        lines = log.read_text().splitlines()
        assert [line.split()[0] for line in lines] == ["start", "end"] * 3  # strictly serial
        assert announcer.played == 3


@needs_tools
def test_a_full_queue_shows_in_health(synth, tmp_path):
    command, gate, log = gated_player(tmp_path)
    with Announcer(synth, command=command, max_queue=1) as announcer:
        assert announcer.health() == ("ok", None, "queue 0/1, played 0")
        announcer.announce(Announcement(1, "1", "1番窓口"))
        wait_for(lambda: log.exists(), what="the first play")
        announcer.announce(Announcement(2, "1", "1番窓口"))
        announcer.announce(Announcement(3, "1", "1番窓口"))
        assert announcer.health() == ("warning", "queue_full", "announcements dropped (1 in all); queue 1/1, played 0")
        gate.touch()
        assert announcer.wait_idle(20)
        assert [p.announcement.ticket for p in announcer.history] == [1, 3]


def test_the_same_call_twice_is_announced_once(chime_only, tmp_path):
    command, gate, _ = gated_player(tmp_path)
    gate.touch()
    with Announcer(chime_only, command=command, dedupe_s=30) as announcer:
        call = Announcement(5, "2", "2番窓口")
        assert announcer.announce(call)
        assert not announcer.announce(Announcement(5, "2", "2番窓口"))  # a board re-published
        assert announcer.announce(Announcement(5, "2", "2番窓口", recall=True))  # a recall is new
        assert not announcer.announce(Announcement(5, "2", "2番窓口", recall=True))
        assert announcer.announce(Announcement(6, "2", "2番窓口"))
        assert announcer.wait_idle(10)
        assert [(p.announcement.ticket, p.announcement.recall) for p in announcer.history] == [
            (5, False), (5, True), (6, False)]
        assert announcer.deduped == 2
    with Announcer(chime_only, command=command, dedupe_s=0) as announcer:  # window 0: never deduped
        assert announcer.announce(call) and announcer.announce(call)


def test_a_failing_or_missing_player_is_reported_and_the_queue_goes_on(chime_only, tmp_path):
    with Announcer(chime_only, command=["sh", "-c", "echo 'no such card' >&2; exit 1", "sh", "{wav}"]) as announcer:
        announcer.announce(Announcement(1, "1", "1番窓口"))
        announcer.announce(Announcement(2, "1", "1番窓口"))
        assert announcer.wait_idle(10)
        assert [p.ok for p in announcer.history] == [False, False]  # the second was still tried
        status, reason, message = announcer.health()
        assert (status, reason) == ("error", "player_failed") and "no such card" in message
    with Announcer(chime_only, command=[str(tmp_path / "no-aplay"), "{wav}"]) as announcer:
        announcer.announce(Announcement(1, "1", "1番窓口"))
        assert announcer.wait_idle(10)
        assert announcer.health()[:2] == ("error", "player_missing")
    with pytest.raises(ValueError):
        Announcer(chime_only, command=["aplay"])


def test_a_hung_player_is_killed_and_the_queue_goes_on(chime_only, tmp_path):
    # A wrapper script whose child hangs: the whole group is killed, or its
    # child would keep the pipe open and the queue stuck for 30 s.
    with Announcer(chime_only, command=["sh", "-c", "sleep 30; echo $0", "{wav}"], play_timeout_s=0.2) as announcer:
        announcer.announce(Announcement(1, "1", "1番窓口"))
        started = time.monotonic()
        assert announcer.wait_idle(10)
        assert time.monotonic() - started < chime_mod.DURATION_S + 3  # killed at length + 0.2 s
        [played] = announcer.history
        assert "did not finish" in played.error
        assert announcer.health()[:2] == ("error", "player_hung")


def test_the_lobby_config():
    from bus.configfile import ConfigError, parse_toml
    from edge.config import EdgeConfig

    head = b'[device]\nid = "lobby-1"\nsite = "midori"\nrole = "lobby"\n'
    config = parse_toml(head, EdgeConfig)
    assert config.voice.player == ["aplay", "-q", "-D", "{device}", "{wav}"] and config.voice.max_queue == 5
    for bad, why in ((head + b'counter = "1"\n', "has no 'counter'"),
                     (head + b'[voice]\nplayer = ["aplay"]\n', "{wav}"),
                     (head + b'[voice]\nvolume = 2\n', "volume"),
                     (head + b'[voice]\ndevice = "hw:0; rm -rf /"\n', "device"),
                     (head + b'[voice]\nvolum = 0.5\n', "did you mean 'volume'")):
        with pytest.raises(ConfigError, match=re.escape(why)):
            parse_toml(bad, EdgeConfig)


def test_close_stops_a_playing_announcement(chime_only, tmp_path):
    command, _, log = gated_player(tmp_path)  # the gate never opens
    announcer = Announcer(chime_only, command=command)
    announcer.announce(Announcement(1, "1", "1番窓口"))
    announcer.announce(Announcement(2, "1", "1番窓口"))
    wait_for(lambda: log.exists(), what="the player started")
    started = time.monotonic()
    announcer.close()
    assert time.monotonic() - started < 3
    assert announcer.closed and not announcer.announce(Announcement(3, "1", "1番窓口"))
    assert "start" in log.read_text() and "end" not in log.read_text()
    assert not any(Path(chime_only.workdir).glob("a*.wav"))  # nothing left behind


@needs_tools
def test_aplay_plays_the_real_announcement_on_alsas_null_device(synth):
    with Announcer(synth, device="null") as announcer:  # the default command: aplay -q -D null <wav>
        assert announcer.command[:3] == ("aplay", "-q", "-D")
        announcer.announce(Announcement(42, "1", "1番窓口", "Counter 1"))
        assert announcer.wait_idle(30)
        [played] = announcer.history
        assert played.ok, played.error
        assert played.parts == ("chime", "ja", "en") and played.duration_s > 8
        assert announcer.health() == ("ok", None, "queue 0/5, played 1")


def test_the_recording_loudspeaker_takes_as_long_as_the_wav(tmp_path):
    wav = chime_mod.write_chime(tmp_path / "chime.wav")
    out = tmp_path / "rec"
    subprocess.run([sys.executable, "-m", "drivers.voice.record", "--dir", str(out), "--speed", "4", str(wav)],
                   check=True, timeout=20, cwd=Path(__file__).resolve().parents[2])
    [entry] = plays(out)
    assert entry["duration_s"] == pytest.approx(chime_mod.DURATION_S, abs=0.01)
    assert entry["end"] - entry["start"] >= chime_mod.DURATION_S / 4 - 0.01
    assert (out / entry["wav"]).read_bytes() == wav.read_bytes()
    bad = subprocess.run([sys.executable, "-m", "drivers.voice.record", "--dir", str(out), str(tmp_path / "x.wav")],
                         check=False, capture_output=True, timeout=20, cwd=Path(__file__).resolve().parents[2])
    assert bad.returncode == 1 and b"cannot play" in bad.stderr
    assert len(plays(out)) == 1


# ---------------------------------------------------------------- the lobby's choice of calls
T0 = datetime(2026, 11, 20, 1, 0, tzinfo=UTC)


def board(ts_s: float, *calls: tuple[int, str, float, bool]) -> bytes:
    """A LobbyBoard payload published at T0 + ``ts_s``; calls (ticket, counter,
    seconds after T0, recall), newest first as central lists them."""
    return encode(LobbyBoard(ts=T0 + timedelta(seconds=ts_s), waits=[], calls=[
        CallEntry(ticket=t, counter=c, counter_ja=f"{c}番窓口", counter_en=f"Counter {c}",
                  at=T0 + timedelta(seconds=at), recall=r) for t, c, at, r in calls]))


def test_the_lobby_announces_only_new_recent_calls_oldest_first(chime_only, tmp_path):
    command, gate, _ = gated_player(tmp_path)
    gate.touch()
    with Announcer(chime_only, command=command, dedupe_s=0) as announcer:
        role = LobbyRole("lobby-1", announcer, max_age_s=30)
        role.on_board(board(0, (2, "1", -5, False), (1, "2", -10, False)), retained=True)  # on (re)connect
        role.on_board(board(1, (3, "2", 1, False), (2, "1", -5, False), (1, "2", -10, False)), retained=False)
        # Two new ones in one board (newest first): 2 recalled, then 4 called.
        role.on_board(board(2, (4, "3", 1.8, False), (2, "1", 1.5, True), (3, "2", 1, False)), retained=False)
        role.on_board(board(3, (4, "3", 1.8, False), (2, "1", 1.5, True)), retained=False)  # only the waits changed
        role.on_board(board(120, (9, "1", 120, False), (8, "1", 20, False)), retained=False)  # 8: 100 s old
        role.on_board(b'{"schema": 1, "ts": "yesterday"}', retained=False)
        role.on_board(b"\x00" * 70_000, retained=False)
        assert announcer.wait_idle(10)
        assert [(p.announcement.ticket, p.announcement.recall) for p in announcer.history] == [
            (3, False), (2, True), (4, False), (9, False)]
        assert announcer.history[0].announcement.counter_ja == "2番窓口"
        assert (role.announced, role.too_old, role.rejected, role.boards) == (4, 1, 2, 5)
