from referloop.cli import PROJECT_ROOT
from referloop.config import Settings
from referloop.settings_doc import settings_table


def test_every_setting_says_what_it_does():
    undocumented = [
        name for name, field in Settings.model_fields.items() if not (field.description or "").strip()
    ]
    assert undocumented == []


def test_readme_documents_every_setting_as_the_code_defines_it():
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert settings_table() in readme, "README settings table is stale: run `referloop settings-doc --write`"
    for name in Settings.model_fields:
        assert f"`REFERLOOP_{name.upper()}`" in readme
