"""docs/robustness.md lists every hostile input the suite builds (and only those), by name."""

import os
import re

from tests.robustness.cases import INPUT_CASES

DOC = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "docs", "robustness.md"
)


def test_every_input_case_is_in_the_catalogue():
    text = open(DOC, encoding="utf-8").read()
    table = text.split("## Inputs to `scripts/assess.py`")[1].split("\n## ")[0]
    rows = {
        m.group(1).strip(): m.group(2).strip()
        for m in re.finditer(r"^\| ([^|]+) \| `?([a-z_]+)`? \|", table, re.M)
        if m.group(1).strip() != "case"
    }
    assert rows == {c.name: c.status for c in INPUT_CASES}
