"""Paper-profile fidelity: every Table 1 row's paper-profile spec, resolved into flat settings
(``reproduce/fidelity.py``), against ``reproduce/paper_settings.md``, field by field. A setting an
outside source fixes (a file of the authors' code, or a paper section) is a test of its own and
fails when the code contradicts it; the project's own choices are checked together in one test
and counted apart: they are never counted as confirmed."""

import copy
import functools
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # reproduce/ is a top-level directory of the repo, not installed
    sys.path.append(str(ROOT))

from reproduce import fidelity  # noqa: E402
from reproduce.rows import all_specs  # noqa: E402
from reproduce.spec import ROW_NAMES  # noqa: E402

TABLE = fidelity.read_paper_settings()
ENTRIES = fidelity.entry_table()  # {entry: (row, extractor)}, from the rows' paper-profile specs


@functools.cache
def _specs():
    return {spec.name: spec for spec in all_specs(list(ROW_NAMES), "paper", False)}


@functools.cache
def _resolved():
    return fidelity.resolve(specs=_specs())


def _confirmed_params():
    return [pytest.param(entry, field, id=f"{entry}.{field}")
            for entry, fields in TABLE.items() for field, setting in fields.items() if setting.confirmed]


def test_every_row_of_table_1_has_entries_and_every_entry_the_core_fields():
    assert {row for row, _ in ENTRIES.values()} == set(ROW_NAMES)
    assert list(TABLE) == list(ENTRIES), "paper_settings.md sections vs the rows' RowSpec.fidelity entries"
    for entry, fields in TABLE.items():
        missing = [field for field in fidelity.CORE_FIELDS if field not in fields]
        assert not missing, f"{entry}: paper_settings.md lacks {missing}"
        for field, setting in fields.items():
            assert setting.kind in fidelity.SOURCE_KINDS, f"{entry}.{field}"
            if setting.kind == "code":  # a repo-relative file of a repository that was read
                assert setting.repo in fidelity.KNOWN_REPOS.values() and not setting.path.startswith("/")


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_resolved_paper_config_has_exactly_the_table_fields(entry):
    row = ENTRIES[entry][0]
    resolved = _resolved()[entry]
    print(f"\n[{entry}] resolved from the {row} row's paper-profile spec:")
    print(json.dumps({field: fidelity.format_value(value) for field, value in resolved.items()}, indent=1))
    table = TABLE[entry]
    settings_in_table = {field for field, setting in table.items() if setting.value != fidelity.NOT_A_SETTING}
    assert set(resolved) == settings_in_table, (
        f"{entry}: fields only in the code: {sorted(set(resolved) - settings_in_table)}; "
        f"only in paper_settings.md: {sorted(settings_in_table - set(resolved))}")


@pytest.mark.parametrize("entry, field", _confirmed_params())
def test_paper_profile_setting_equals_its_outside_source(entry, field):
    setting = TABLE[entry][field]
    code = _resolved()[entry].get(field, fidelity.NOT_A_SETTING)
    assert fidelity.same_value(setting.value, code), (
        f"{entry}.{field}: {setting.citation} says {fidelity.format_value(setting.value)}; "
        f"the {ENTRIES[entry][0]} row's paper-profile spec has {fidelity.format_value(code)}")


def test_the_projects_own_choices_are_recorded_as_the_code_has_them_and_counted_apart(capsys):
    checks = fidelity.check(TABLE, _resolved())
    choices = [item for item in checks if item.setting is not None and not item.setting.confirmed]
    stale = [f"{item.entry}.{item.field}: table {fidelity.format_value(item.paper)}, code "
             f"{fidelity.format_value(item.code)}" for item in choices if not item.agrees]
    assert not stale, stale
    number = fidelity.counts(checks)
    assert number["own_choice"] == len(choices) and number["disagreeing"] == 0
    assert number["confirmed"] + number["own_choice"] == number["settings"]
    with capsys.disabled():
        print(f"\n[paper fidelity] {fidelity.summary_line(checks)}")


def test_every_correction_from_the_authors_code_is_confirmed_by_its_file():
    expected = {  # protocol.md, "Corrections from the authors' code"
        ("thermometer", "attack.start_from"): ("thermometer/robustml_attack.py", 0.0),
        ("sap", "attack.start_from"): ("sap/robustml_attack.py", 0.0),
        ("lid", "attack.start_from"): ("lid/lid.ipynb", 0.5),  # zeros of the model's [-0.5, 0.5] scale
        ("sap", "eot_samples"): ("sap/robustml_attack.py", 1),
        ("sap", "steps"): ("sap/robustml_attack.py", 500),
        ("defensegan/bpda", "projection.momentum"): ("models/gan.py", 0.7),
        ("defensegan/bpda", "projection.lr_decay"): ("models/gan.py", 0.1),
        ("defensegan/bpda", "projection.lr_decay_at"): ("models/gan.py", 0.8),
        ("madry/adversarial_training", "steps"): ("config.json", 10),
        **{(f"guo/{name}", "loss"): (f"inputtransformations/{notebook}.ipynb", "ce")
           for name, notebook in (("bit_depth", "bitdepth"), ("jpeg", "jpeg"), ("crop_rescale", "crop"),
                                  ("tv", "tv"), ("quilting", "quilt"))},
    }
    for (entry, field), (path, value) in expected.items():
        setting = TABLE[entry][field]
        assert setting.kind == "code" and setting.path == path, (entry, field, setting.citation)
        assert fidelity.same_value(setting.value, value) and fidelity.same_value(_resolved()[entry][field], value)


def test_a_changed_setting_is_caught():
    specs = copy.deepcopy(_specs())
    specs["sap"].config["adaptive_attack"]["steps"] = 499
    specs["xie"].config["adaptive_attack"]["update"] = "sign"
    checks = fidelity.check(TABLE, fidelity.resolve(["sap", "xie"], specs=specs))
    wrong = {(item.entry, item.field) for item in checks if not item.agrees}
    assert wrong == {("sap", "steps"), ("xie", "update")}


@pytest.mark.parametrize("token, value", [
    ("8/255", 8 / 255), ("0.5/255", 0.5 / 255), ("10000", 10000), ("2e-4", 2e-4), ("true", True),
    ("160,320,640", (160, 320, 640)), ("adam_sign", "adam_sign"), ("-", fidelity.NOT_A_SETTING),
])
def test_table_tokens_parse(token, value):
    assert fidelity.same_value(fidelity.parse_value(token), value)


def test_values_compare_by_type_and_tolerance():
    assert fidelity.same_value(8 / 255, 0.031372549019607843)
    assert not fidelity.same_value(0.031, 8 / 255)  # 0.031 is Table 1's rounding, not the bound
    assert not fidelity.same_value(True, 1) and not fidelity.same_value(1, True)
    assert not fidelity.same_value((1, 2), (1, 2, 3))


@pytest.mark.parametrize("source, message", [
    ("", "x.steps: no source"),
    ("Row 1 *Attack* [REPO]", "neither"),  # a note, not a source
    ("[somewhere] `attack.py`: steps", "unknown repository"),
    ("choice:", "neither"),  # a choice must say why
])
def test_a_cell_without_a_source_is_rejected(tmp_path, source, message):
    path = tmp_path / "settings.md"
    path.write_text(f"### `x`\n\n| field | paper setting | source |\n|---|---|---|\n| steps | `3` | {source} |\n")
    with pytest.raises(ValueError, match=message):
        fidelity.read_paper_settings(path)


def test_unconfirmed_and_mismatch_markers_are_refused(tmp_path):
    path = tmp_path / "settings.md"
    path.write_text("### `x`\n\n| field | paper setting | source |\n|---|---|---|\n"
                    "| steps | `3` UNCONFIRMED | choice: ours |\n")
    with pytest.raises(ValueError, match="markers"):
        fidelity.read_paper_settings(path)


def test_a_contradiction_with_a_cited_source_is_reported_and_fails_the_command(monkeypatch, capsys):
    table = {entry: dict(fields) for entry, fields in TABLE.items()}
    table["sap"]["steps"] = fidelity.PaperSetting(499, "[obfuscated-gradients] `sap/robustml_attack.py`: x",
                                                  kind="code", repo="anishathalye/obfuscated-gradients",
                                                  path="sap/robustml_attack.py")
    monkeypatch.setattr(fidelity, "read_paper_settings", lambda: table)
    assert fidelity.main(["--entries", "sap"]) == 1
    assert "sap.steps (CONTRADICTS ITS SOURCE)" in capsys.readouterr().out


def test_command_line_prints_the_resolved_table(capsys):
    assert fidelity.main(["--entries", "sap,guo"]) == 0
    out = capsys.readouterr().out
    assert "| sap | cifar10 | 8/255 | linf | none | 500 | 0.1/255 | adam_sign | 1 |" in out
    assert "guo/quilting" in out and "thermometer" not in out
    assert "confirmed by an outside source" in out and "the project's own choice" in out
    assert fidelity.main(["--fields", "--entries", "madry"]) == 0
    out = capsys.readouterr().out
    assert "| madry | steps | 20 | 20 | MadryLab/cifar10_challenge: README.md | confirmed |" in out
    assert "| madry | examples | 10000 | 10000 | MadryLab/cifar10_challenge: config.json | confirmed |" in out
