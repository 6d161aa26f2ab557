"""The docs cannot drift from the code: config reference, README commands."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import msgspec
import pytest

from dask_eventbus import get_backend
from dask_eventbus.config import DEFAULTS, Settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "docs" / "_ext"))

import eventbus_reference  # noqa: E402


def setting_keys(cls: type[msgspec.Struct], prefix: str = "eventbus") -> set[str]:
    keys = set()
    for field in msgspec.structs.fields(cls):
        key = f"{prefix}.{field.encode_name}"
        if isinstance(field.type, type) and issubclass(field.type, msgspec.Struct):
            keys |= setting_keys(field.type, key)
        elif field.encode_name != "backends":
            keys.add(key)
    return keys


def test_every_setting_is_in_the_defaults_file_with_its_meaning() -> None:
    entries = eventbus_reference.config_entries()
    documented = {key: meaning for key, _, meaning in entries}
    settings = setting_keys(Settings)
    assert settings == {k for k in documented if not k.startswith("eventbus.backends.")}
    undocumented = [key for key, meaning in documented.items() if not meaning]
    assert not undocumented, f"add a comment above these keys in eventbus.yaml: {undocumented}"


@pytest.mark.parametrize("backend", sorted(DEFAULTS["eventbus"]["backends"]))
def test_every_backend_option_is_in_the_defaults_file_with_its_default(backend: str) -> None:
    cls = get_backend(backend)
    declared = {f.encode_name for f in msgspec.structs.fields(cls.Options)}
    in_file = DEFAULTS["eventbus"]["backends"][backend]
    assert set(in_file) == declared, "eventbus.yaml and the backend's Options differ"
    assert cls(**in_file).options == cls().options


def test_the_readme_has_exactly_two_setup_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", readme, re.S)
    install_and_demo = [b for b in blocks if "dask-eventbus demo" in b and "pip install" in b]
    tests = re.findall(r"<!-- test-command -->\n```sh\n(.*?)\n```\n<!-- /test-command -->", readme)
    assert len(install_and_demo) == 1 and len(tests) == 1
    assert "pytest" in tests[0] and '".[test]"' in tests[0]
    assert "test-command" in (ROOT / ".ci" / "run").read_text()
