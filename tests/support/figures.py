"""Figures the fault tests measure (lost, duplicated, detection split, fuzz counts, ...).

`record(name, **values)` prints one line (visible with `pytest -s`) and writes
`build/figures/<name>.json`, so a CI run leaves the numbers docs/reliability.md
quotes next to the logs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

FIGURES = Path(__file__).resolve().parents[2] / "build" / "figures"


def record(name: str, **values: Any) -> None:
    FIGURES.mkdir(parents=True, exist_ok=True)
    doc = {"name": name, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **values}
    (FIGURES / f"{name}.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"FIGURES {name}: {json.dumps(values, default=str)}")
