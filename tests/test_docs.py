"""The docs match the code: the config reference, the reason codes, the README's commands."""

from pathlib import Path

from device.config import defaults_toml
from device.credentials.reasons import REASONS

ROOT = Path(__file__).resolve().parent.parent


def test_configuration_reference_is_current():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert defaults_toml().strip() in doc, "regenerate docs/configuration.md (chot terminal check-config --defaults)"


def test_every_reason_code_is_documented():
    doc = (ROOT / "docs" / "reasons.md").read_text()
    missing = [code for code in REASONS if f"`{code}`" not in doc]
    assert not missing, f"reason codes missing from docs/reasons.md: {missing}"


def test_readme_gives_the_two_commands_and_ci_calls_the_test_one():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
