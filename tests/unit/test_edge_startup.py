"""How the edge daemon refuses to start: a clear line and the exit code
systemd acts on (78 = the config is wrong, do not restart; 69 = a peripheral
or the software for it is missing).  Real ``madoguchi edge`` processes."""

from __future__ import annotations

import subprocess
import sys

from tests.support.procs import REPO

BASE = ('[device]\nid = "counter-9"\nsite = "midori"\nrole = "counter"\ncounter = "9"\n'
        "[mqtt]\nport = 1\n[buttons]\ndriver = \"mock\"\n[display]\ndriver = \"log\"\n")


def run_edge(config, *, block: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    # A module set to None in sys.modules cannot be imported: a Pi where the
    # library was never installed.
    code = ("import sys\n"
            + "".join(f"sys.modules[{name!r}] = None\n" for name in block)
            + "from bus.cli import main\nsys.exit(main(['edge', '--config', sys.argv[1]]))\n")
    return subprocess.run([sys.executable, "-c", code, str(config)], check=False, cwd=REPO, capture_output=True, text=True,
                          timeout=30)


def test_a_bad_config_exits_78_with_the_reason(tmp_path):
    config = tmp_path / "edge.toml"
    config.write_text(BASE.replace('counter = "9"', 'counter = "9"\ncolour = "red"'), encoding="utf-8")
    result = run_edge(config)
    assert result.returncode == 78, result.stderr[-2000:]
    assert "colour" in result.stderr


def test_a_printer_without_python_escpos_exits_69_saying_what_to_install(tmp_path):
    config = tmp_path / "edge.toml"
    config.write_text(BASE + f'[printer]\ndriver = "network"\nhost = "127.0.0.1"\n'
                             f'[payments]\njournal = "{tmp_path / "journal.db"}"\n', encoding="utf-8")
    result = run_edge(config, block=("escpos", "escpos.printer", "qrcode"))
    assert result.returncode == 69, result.stderr[-2000:]
    assert "python-escpos" in result.stderr and "madoguchi[edge]" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_broken_database_file_exits_69_and_a_bad_tls_file_exits_78(tmp_path):
    journal = tmp_path / "journal.db"
    journal.write_bytes(b"this is not a database" * 100)
    config = tmp_path / "edge.toml"
    config.write_text(BASE + f'[payments]\njournal = "{journal}"\n', encoding="utf-8")
    result = run_edge(config)
    assert result.returncode == 69, result.stderr[-2000:]
    assert "not a database" in result.stderr and "Traceback" not in result.stderr

    ca = tmp_path / "ca.crt"
    ca.write_text("not a certificate\n")
    config.write_text(BASE + f'[payments]\njournal = "{tmp_path / "ok.db"}"\n[mqtt.tls]\nca_file = "{ca}"\n',
                      encoding="utf-8")
    result = run_edge(config)
    assert result.returncode == 78, result.stderr[-2000:]
    assert "[mqtt.tls]" in result.stderr and "Traceback" not in result.stderr
