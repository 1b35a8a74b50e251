"""What every bench script does at the end: the environment section, and writing the results
(markdown table + JSON, each atomically) while printing the table."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def environment_block(meta: dict[str, Any]) -> list[str]:
    return ["", "## Environment", "", "```json", json.dumps(meta["environment"], indent=1), "```", ""]


def publish(out: Path, text: str, payload: dict[str, Any], *, echo: bool = True) -> None:
    from effdl.core.io import atomic_write, write_json

    if echo:
        print(text)
    atomic_write(out, text)
    write_json(out.with_suffix(".json"), payload)
