"""A fake loudspeaker: a player command that records instead of playing.

For machines without a sound card (CI, a laptop demo) the lobby's ``[voice]
player`` can be::

    player = ["python3", "-m", "drivers.voice.record", "--dir", "/tmp/voice", "{wav}"]

Each WAV it is given is copied to ``--dir`` and one JSON line is appended to
``plays.jsonl`` there: the copy's name, its length, and when "playback"
started and ended (``time.monotonic()``, which is one clock for all processes
of a Linux machine, and wall-clock time).  It then takes as long as the WAV
lasts (divided by ``--speed``), as a sound card would, so a test sees the
real timing of the queue.  :func:`plays` reads the log back.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import sys
import time
import wave
from pathlib import Path

LOG_NAME = "plays.jsonl"


def plays(folder: Path) -> list[dict]:
    """The recorded plays in ``folder``, in the order they ended."""
    path = Path(folder) / LOG_NAME
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drivers.voice.record", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, type=Path, help="where the WAVs and plays.jsonl go")
    parser.add_argument("--speed", type=float, default=1.0, help="play this many times faster (tests)")
    parser.add_argument("wav", type=Path)
    args = parser.parse_args(argv)
    started, started_wall = time.monotonic(), time.time()
    try:
        with wave.open(str(args.wav), "rb") as w:
            duration = w.getnframes() / w.getframerate()
            channels, rate = w.getnchannels(), w.getframerate()
    except (OSError, EOFError, wave.Error) as exc:
        print(f"record: cannot play {args.wav}: {exc}", file=sys.stderr)
        return 1
    args.dir.mkdir(parents=True, exist_ok=True)
    copy = args.dir / f"{time.time_ns()}-{os.getpid()}.wav"
    shutil.copyfile(args.wav, copy)
    time.sleep(max(0.0, duration / max(args.speed, 0.001) - (time.monotonic() - started)))
    entry = {"wav": copy.name, "duration_s": round(duration, 3), "rate": rate, "channels": channels,
             "start": started, "end": time.monotonic(), "start_wall": started_wall, "end_wall": time.time()}
    with open(args.dir / LOG_NAME, "a", encoding="utf-8") as log:
        fcntl.flock(log, fcntl.LOCK_EX)
        log.write(json.dumps(entry) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
