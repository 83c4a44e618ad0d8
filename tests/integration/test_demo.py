"""The demo is the product's shop window: it must run its scripted morning
end to end (every press checks what the counter display shows)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import wave

from tests.support.procs import REPO


def test_demo_runs_its_scripted_morning():
    result = subprocess.run(
        [sys.executable, "-m", "bus.cli", "demo", "--speed", "0", "--exit-after-script", "--http-port", "0", "--display-port", "0",
         "--kiosk-port", "0", "--voice", "files", "--keep"],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "住民異動(1) → 国民健康保険(2) → 児童手当・こども医療(3) — done" in out
    assert "お待ちの方はいません" in out  # precedence: 国保 waits for 住民異動
    assert "決済が完了しました（伝票番号" in out  # a card payment on the ZVT simulator
    assert "お釣り 650 円" in out  # cash with the PAY button
    assert "600円を取り消しました" in out  # a same-day void
    assert "過不足 -10円" in out  # the day close on last month's synthetic data
    assert "🔎 明細照合" in out and "照合 " in out
    assert "/t/" in out and "📱" in out  # the visitor's page link of a ticket
    assert "🎫 発券機" in out and "券を印刷" in out and "証明書発行 (1番窓口・3番窓口)" in out  # the kiosk answered and printed
    assert "発券機 ticket kiosk     http://127.0.0.1:" in out
    assert "demo script finished" in out
    # The lobby Pi announced the first call; its WAV is real speech, not silence.
    said = re.search(r"📢 館内放送: 「受付番号 (\d+) 番の方、1 番窓口へお越しください」（音声 (\S+\.wav)）", out)
    assert said, out[-3000:]
    with wave.open(said[2], "rb") as w:
        assert w.getnframes() / w.getframerate() > 5  # chime + Japanese + English
    assert "機器管理 IT admin" in out
    shutil.rmtree(re.search(r"作業フォルダ logs\s+(\S+)", out)[1], ignore_errors=True)
