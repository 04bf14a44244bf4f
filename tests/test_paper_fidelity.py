"""Paper-profile fidelity: every Table 1 row's paper-profile spec, resolved into flat settings
(``reproduce/fidelity.py``), equals the table of protocol.md's settings in
``reproduce/paper_settings.md``, field by field. Known disagreements are marked MISMATCH in the
table and are strict expected failures here (they turn into errors once the row is fixed, so the
marker gets removed)."""

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


@functools.cache
def _specs():
    return {spec.name: spec for spec in all_specs(list(ROW_NAMES), "paper", False)}


@functools.cache
def _resolved():
    return fidelity.resolve(specs=_specs())


def _field_params():
    params = []
    for entry, fields in TABLE.items():
        for field, setting in fields.items():
            marks = [pytest.mark.xfail(strict=True, reason=f"known MISMATCH: {setting.text}")] if setting.mismatch else []
            params.append(pytest.param(entry, field, id=f"{entry}.{field}", marks=marks))
    return params


def test_every_row_of_table_1_has_entries_and_every_entry_the_core_fields():
    assert {row for row, _ in fidelity.ENTRIES.values()} == set(ROW_NAMES)
    assert list(TABLE) == list(fidelity.ENTRIES), "paper_settings.md sections vs reproduce.fidelity.ENTRIES"
    for entry, fields in TABLE.items():
        missing = [field for field in fidelity.CORE_FIELDS if field not in fields]
        assert not missing, f"{entry}: paper_settings.md lacks {missing}"
        for field, setting in fields.items():
            # a place in protocol.md: "Row N ..." or a global section in *italics*
            cited = setting.citation.startswith("Row ") or "*" in setting.citation or setting.citation == "not applicable"
            assert cited, f"{entry}.{field}: citation {setting.citation!r} names no place in protocol.md"


@pytest.mark.parametrize("entry", list(fidelity.ENTRIES))
def test_resolved_paper_config_has_exactly_the_table_fields(entry):
    row = fidelity.ENTRIES[entry][0]
    resolved = _resolved()[entry]
    print(f"\n[{entry}] resolved from the {row} row's paper-profile spec:")
    print(json.dumps({field: fidelity.format_value(value) for field, value in resolved.items()}, indent=1))
    table = TABLE[entry]
    settings_in_table = {field for field, setting in table.items() if setting.value != fidelity.NOT_A_SETTING}
    assert set(resolved) == settings_in_table, (
        f"{entry}: fields only in the code: {sorted(set(resolved) - settings_in_table)}; "
        f"only in paper_settings.md: {sorted(settings_in_table - set(resolved))}")


@pytest.mark.parametrize("entry, field", _field_params())
def test_paper_profile_setting_equals_protocol(entry, field):
    setting = TABLE[entry][field]
    code = _resolved()[entry].get(field, fidelity.NOT_A_SETTING)
    assert fidelity.same_value(setting.value, code), (
        f"{entry}.{field}: protocol.md says {fidelity.format_value(setting.value)} ({setting.citation}); "
        f"the {fidelity.ENTRIES[entry][0]} row's paper-profile spec has {fidelity.format_value(code)}")


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


def test_a_cell_without_citation_is_rejected(tmp_path):
    path = tmp_path / "settings.md"
    path.write_text("### `x`\n\n| field | paper setting | protocol.md |\n|---|---|---|\n| steps | `3` |  |\n")
    with pytest.raises(ValueError, match="x.steps: no protocol.md citation"):
        fidelity.read_paper_settings(path)


def test_command_line_prints_the_resolved_table(capsys):
    assert fidelity.main(["--entries", "sap,guo"]) == 0
    out = capsys.readouterr().out
    assert "| sap | cifar10 | 8/255 | linf | none | 500 | 0.1/255 | adam_sign | 10 |" in out
    assert "guo/quilting" in out and "thermometer" not in out
    assert fidelity.main(["--fields", "--entries", "madry"]) == 0
    assert "| madry | steps | 20 | 20 | ok |" in capsys.readouterr().out
