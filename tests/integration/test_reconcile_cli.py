"""``madoguchi reconcile`` end to end on a real database file: sample →
import (twice: a no-op) → match → report → exceptions → resolve, with the
exit codes a script relies on (0, 65 with line numbers, 78)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from central.reconcile_cli import reconcile_command

CONFIG = Path(__file__).resolve().parents[2] / "config"


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="madoguchi")
    reconcile_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return args.func(args)


@pytest.fixture
def toml(tmp_path) -> str:
    path = tmp_path / "central.toml"
    path.write_text(
        f'[central]\nsite_file = "{CONFIG / "site.toml"}"\nfees_file = "{CONFIG / "fees.toml"}"\n'
        f'brands_file = "{CONFIG / "brands.toml"}"\ndatabase = "{tmp_path / "central.db"}"\n',
        encoding="utf-8",
    )
    from central.store import Store

    Store(tmp_path / "central.db").close()  # central made it (the CLI never creates one)
    return str(path)


def test_a_missing_database_is_refused_not_created(toml, tmp_path, capsys):
    typo = tmp_path / "centrl.db"
    sample = tmp_path / "s.csv"
    sample.write_text("x", encoding="utf-8")
    assert run("reconcile", "--config", toml, "--database", str(typo), "import", str(sample),
               "--source", "agent", "--month", "2026-11") == 78
    assert "no database" in capsys.readouterr().err
    assert not typo.exists()


def test_the_whole_month_from_the_command_line(toml, tmp_path, capsys):
    sample = tmp_path / "statement.csv"
    assert run("reconcile", "--config", toml, "sample", "--month", "2026-11", "--out", str(sample), "--faults",
               "--encoding", "cp932", "--fill-ledger", "20", "--seed", "2") == 0
    out = capsys.readouterr().out
    assert "fault missing" in out and "fault extra" in out
    # A demo database only: a month that has payments is not filled again.
    assert run("reconcile", "--config", toml, "sample", "--month", "2026-11", "--out", str(sample),
               "--fill-ledger", "20") == 65
    assert "already has" in capsys.readouterr().err
    assert run("reconcile", "--config", toml, "sample", "--month", "2026-11", "--out", str(sample), "--faults",
               "--encoding", "cp932", "--seed", "2") == 0
    capsys.readouterr()

    assert run("reconcile", "--config", toml, "import", str(sample), "--source", "agent", "--month", "2026-11",
               "--by", "k.sato") == 0
    assert "read as cp932" in capsys.readouterr().out
    assert run("reconcile", "--config", toml, "import", str(sample), "--source", "agent", "--month", "2026-11") == 0
    assert "nothing changed" in capsys.readouterr().out

    assert run("reconcile", "--config", toml, "match", "--month", "2026-11", "--by", "k.sato") == 0
    out = capsys.readouterr().out
    assert "照合 #1 2026-11" in out and "ledger_only: 1" in out and "fee_mismatch: 1" in out

    html, csv_out = tmp_path / "r.html", tmp_path / "r.csv"
    assert run("reconcile", "--config", toml, "report", "--month", "2026-11", "--html", str(html),
               "--csv", str(csv_out)) == 0
    assert "公金振替" in html.read_text(encoding="utf-8")
    assert csv_out.read_bytes().startswith(b"\xef\xbb\xbf")
    capsys.readouterr()
    assert run("reconcile", "--config", toml, "report", "--month", "2026-11", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    open_ledger_only = [e for e in report["exceptions"] if e["bucket"] == "ledger_only"]

    assert run("reconcile", "--config", toml, "resolve", str(open_ledger_only[0]["id"]), "--by", "k.sato",
               "--note", "代行会社へ照会済み") == 0
    capsys.readouterr()
    assert run("reconcile", "--config", toml, "exceptions", "--open") == 0
    listed = capsys.readouterr().out
    assert f"#{open_ledger_only[0]['id']} " not in listed and "statement_only" in listed
    assert run("reconcile", "--config", toml, "resolve", "9999", "--by", "k.sato", "--note", "x") == 65


def test_a_bad_file_exits_65_with_its_line_numbers_and_a_bad_config_78(toml, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(
        "取引ID,取引日時,端末番号,伝票番号,承認番号,ブランド,取引区分,取引金額,手数料,入金額,元取引ID,入金予定日\r\n"
        "1,2026/11/04 09:12:03,T1,12,123456,VISA,売上,300,6,294,,2026/12/15\r\n"
        "2,2026/11/04 09:13:03,T1,13,123457,VISA,売上,300,-1,301,,2026/12/15\r\n".encode("cp932"))
    assert run("reconcile", "--config", toml, "import", str(bad), "--source", "agent", "--month", "2026-11") == 65
    err = capsys.readouterr().err
    assert f"{bad}:3: 手数料 -1 is negative" in err and "read as cp932" in err
    assert run("reconcile", "--config", toml, "match", "--month", "2026-11") == 65
    assert "no statement imported" in capsys.readouterr().err
    assert run("reconcile", "--config", toml, "import", str(tmp_path / "none.csv"), "--source", "agent",
               "--month", "2026-11") == 66
    broken = tmp_path / "broken.toml"
    broken.write_text('[central]\nsite_file = "nowhere.toml"\ndatabase = "x.db"\n', encoding="utf-8")
    assert run("reconcile", "--config", str(broken), "exceptions") == 78
    with pytest.raises(SystemExit):
        run("reconcile", "--config", toml, "match", "--month", "2026-13")
