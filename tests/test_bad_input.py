"""Bad input on the command line (issue 28, item 6): every verb, every option that takes a
value: exit code 2 and ONE line on stderr naming the option and what to give instead;
nothing on stdout, no traceback, nothing written."""

from __future__ import annotations

import os

import pytest

from gradwatch.cli import main

pytestmark = pytest.mark.unit


@pytest.fixture
def places(tmp_path, monkeypatch):
    """A folder, a file, a malformed and an unknown thresholds file, in a fresh cwd."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("not a folder\n")
    (tmp_path / "broken.yml").write_text("explosion_norm: [\n")
    (tmp_path / "typo.yml").write_text("explosion_nrom: 5\n")
    (tmp_path / "list.yml").write_text("- 1\n- 2\n")
    return tmp_path


#: (arguments, what the line must name, what it must say to do)
BAD = [
    ("rules --thresholds broken.yml", "--thresholds 'broken.yml'", "YAML mapping"),
    ("rules --thresholds typo.yml", "--thresholds 'typo.yml'", "explosion_nrom"),
    ("rules --thresholds list.yml", "--thresholds 'list.yml'", "YAML mapping"),
    ("rules --thresholds adir", "argument --thresholds", "name a file"),
    ("rules --thresholds missing.yml", "argument --thresholds", "name an existing file"),
    ("rules --out adir", "argument --out", "or - for stdout"),
    ("rules --out afile/rules.yml", "argument --out", "name a path under a folder"),
    ("rules --runbook-base-url ftp://x", "runbook_base_url", "http(s) URL"),
    ("dashboards --out afile", "argument --out", "name a folder"),
    ("dashboards --thresholds broken.yml", "--thresholds 'broken.yml'", "YAML mapping"),
    ("targets --host x --out afile", "argument --out", "name a folder"),
    ("targets --host x --port 70000", "argument --port", "between 0 and 65535"),
    ("targets --host x --port nine", "argument --port", "between 0 and 65535"),
    ("targets --host x --ranks 0", "argument --ranks", "an integer >= 1"),
    ("targets --host x --label novalue", "--label", "key=value"),
    ("targets --host=", "argument --host", "host name or address"),
    ("report missing_run", "argument path", "name a run folder"),
    ("report adir --out adir", "argument --out", "name a file in it"),
    ("report adir", "adir", "no run with gradwatch data"),
    ("report adir --colours loud", "argument --colours", "choose from"),
    ("metrics-doc --out adir", "argument --out", "name a file in it"),
    ("demo --out afile", "argument --out", "name a folder"),
    ("demo --port -1", "argument --port", "between 0 and 65535"),
    ("demo --every-n-steps 0", "argument --every-n-steps", "an integer >= 1"),
    ("demo --alertmanager-url 127.0.0.1:9093", "argument --alertmanager-url", "http(s) URL"),
    ("demo --pushgateway-url pushgateway", "argument --pushgateway-url", "http(s) URL"),
    ("doctor --metrics-url notaurl", "argument --metrics-url", "http(s) URL"),
    ("doctor --prometheus-url 9090", "argument --prometheus-url", "http(s) URL"),
    ("doctor --alertmanager-url x", "argument --alertmanager-url", "http(s) URL"),
    ("doctor --timeout -1", "argument --timeout", "seconds > 0"),
    ("doctor --timeout nan", "argument --timeout", "seconds > 0"),
    ("doctor --wait -3", "argument --wait", "seconds >= 0"),
    ("doctor --thresholds adir", "argument --thresholds", "name a file"),
    ("doctor", "--metrics-url", "nothing to check"),
    ("nosuchverb", "argument COMMAND", "choose from"),
]


@pytest.mark.parametrize("arguments, names, fix", BAD, ids=[a for a, _, _ in BAD])
def test_bad_input_is_one_line_naming_the_option_and_the_fix(places, capsys, arguments,
                                                             names, fix):
    before = sorted(os.listdir(places))
    try:
        code = main(arguments.split())
    except SystemExit as exit_:  # argparse's own exit, as the console script's
        code = exit_.code
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("gradwatch"), lines[0]
    assert names in lines[0] and fix in lines[0], lines[0]
    assert sorted(os.listdir(places)) == before, "nothing written"
