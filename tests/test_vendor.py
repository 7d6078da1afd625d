"""static/vendor holds exactly the files its README lists, byte for byte as published."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

VENDOR = Path(__file__).resolve().parent.parent / "static" / "vendor"


def listed() -> dict[str, str]:
    rows = re.findall(r"^\| `([^`]+)` \|.*\| `([0-9a-f]{64})` \|$", (VENDOR / "README.md").read_text(), re.MULTILINE)
    return dict(rows)


def test_every_vendored_file_is_listed_with_its_checksum_and_nothing_else_is_there() -> None:
    files = {path.name for path in VENDOR.iterdir() if path.name != "README.md"}
    assert files == set(listed())
    for name, digest in listed().items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
