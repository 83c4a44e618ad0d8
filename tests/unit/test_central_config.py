"""Central's configuration: the sample files load, and every mistake in a site
file stops start-up with a ConfigError naming the file and what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from bus.configfile import ConfigError, load_toml
from central.config import QueueSettings, Site, load

CONFIG = Path(__file__).resolve().parents[2] / "config"
SAMPLE = (CONFIG / "site.toml").read_text(encoding="utf-8")


def test_the_sample_site_loads():
    site = load_toml(CONFIG / "site.toml", Site)
    assert site.site.id == "midori" and site.site.timezone == "Asia/Tokyo"
    assert [c.id for c in site.counters] == ["1", "2", "3"]
    assert site.service("kokuho").after == ("juminido",)
    assert site.service("shomei").after == ()
    assert site.counter("2").services == ("kokuho", "nenkin")
    assert site.device_of_counter("3").id == "counter-3"


def test_the_sample_central_config_loads_with_its_site():
    loaded = load(CONFIG / "central.toml")
    assert loaded.config.central.site_file == (CONFIG / "site.toml").resolve()
    assert loaded.config.queue == QueueSettings(no_show_grace_s=300, max_no_shows=2)
    assert loaded.site.site.id == "midori"
    assert len(loaded.config_hash) == 16


def broken(tmp_path: Path, text: str) -> str:
    """Load ``text`` as a site file; return the ConfigError's message."""
    path = tmp_path / "site.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_toml(path, Site)
    message = str(info.value)
    assert str(path) in message
    return message


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def test_a_counter_naming_an_unknown_service(tmp_path):
    text = replace_once(SAMPLE, 'services = ["kokuho", "nenkin"]', 'services = ["kokuho", "nenkn"]')
    assert "counter 2: unknown service 'nenkn'" in broken(tmp_path, text)


def test_a_procedure_naming_an_unknown_service(tmp_path):
    text = replace_once(SAMPLE, 'services = ["inu"]', 'services = ["dog"]')
    assert "procedure inu-toroku: unknown service 'dog'" in broken(tmp_path, text)


def test_after_naming_an_unknown_service(tmp_path):
    text = replace_once(SAMPLE, 'after = ["juminido"]\ntypical_min = 10', 'after = ["jumin"]\ntypical_min = 10')
    assert "service kokuho: 'after' names unknown service 'jumin'" in broken(tmp_path, text)


def test_a_precedence_cycle(tmp_path):
    text = replace_once(SAMPLE, 'name_en = "Change of address"\n', 'name_en = "Change of address"\nafter = ["inu"]\n')
    assert "services' 'after' form a cycle: juminido → inu → juminido" in broken(tmp_path, text)


def test_a_service_after_itself(tmp_path):
    text = replace_once(SAMPLE, 'name_en = "Certificates"\n', 'name_en = "Certificates"\nafter = ["shomei"]\n')
    assert "cycle: shomei → shomei" in broken(tmp_path, text)


@pytest.mark.parametrize(
    ("kind", "extra"),
    [
        ("service", '[[services]]\nid = "shomei"\nname_ja = "証明"\nname_en = "Certs"\n'),
        ("counter", '[[counters]]\nid = "2"\nname_ja = "2番"\nname_en = "Two"\nservices = ["shomei"]\n'),
        ("procedure", '[[procedures]]\nid = "tennyu"\nname_ja = "転入"\nname_en = "In"\nservices = ["juminido"]\n'),
        ("device", '[[devices]]\nid = "counter-1"\nrole = "kiosk"\n'),
    ],
)
def test_a_duplicate_id(tmp_path, kind, extra):
    message = broken(tmp_path, SAMPLE + "\n" + extra)
    assert f"{kind} id " in message and "is used twice" in message


@pytest.mark.parametrize(
    ("old", "new", "where", "hint"),
    [
        ("typical_min = 15", "typical_mins = 15", "services.0.typical_mins", "typical_min"),
        ('services = ["kokuho", "nenkin"]', 'servces = ["kokuho", "nenkin"]', "counters.1.servces", "services"),
        ('timezone = "Asia/Tokyo"', 'time_zone = "Asia/Tokyo"', "site.time_zone", "timezone"),
        ('[[procedures]]\nid = "tennyu"', '[[procedure]]\nid = "tennyu"', "procedure", "procedures"),
    ],
)
def test_a_misspelt_key_gets_a_did_you_mean(tmp_path, old, new, where, hint):
    message = broken(tmp_path, replace_once(SAMPLE, old, new))
    wrong = where.rsplit(".", 1)[-1]
    assert f"{where}: unknown key '{wrong}' (did you mean '{hint}'?)" in message


def test_other_mistakes(tmp_path):
    far_off = replace_once(SAMPLE, '[[counters]]\nid = "2"', '[[counters]]\nid = "2"\nlabel = "x"')
    assert "counters.1.label: unknown key 'label'" in broken(tmp_path, far_off)
    unserved = SAMPLE + '\n[[services]]\nid = "zeimu"\nname_ja = "税務"\nname_en = "Tax"\n'
    assert "service zeimu: no counter serves it" in broken(tmp_path, unserved)
    bad_zone = replace_once(SAMPLE, 'timezone = "Asia/Tokyo"', 'timezone = "Asia/Tokio"')
    assert "unknown time zone 'Asia/Tokio'" in broken(tmp_path, bad_zone)
    bad_device = replace_once(SAMPLE, 'role = "counter"\ncounter = "3"', 'role = "counter"\ncounter = "9"')
    assert "device counter-3: unknown counter '9'" in broken(tmp_path, bad_device)
    assert "not valid TOML" in broken(tmp_path, SAMPLE + "\n[[services]\n")
    # Several problems are all reported at once.
    both = replace_once(unserved, 'services = ["kokuho", "nenkin"]', 'services = ["kokuho", "nenkn"]')
    message = broken(tmp_path, both)
    assert "zeimu" in message and "nenkn" in message


def test_a_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_toml(tmp_path / "nowhere.toml", Site)
