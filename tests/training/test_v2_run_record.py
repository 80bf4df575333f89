"""docs/dali-tiny.md's table of the v2 run is its record, docs/dali-tiny-v2-run.json."""

from __future__ import annotations

import json

from tests.training.run_tables import DOCS, ROWS, docs_table, shown

RECORD = json.loads((DOCS / "dali-tiny-v2-run.json").read_text())
# Table columns, left to right, after the figure's name.
COLUMNS = ("judge_v1_64", "judge_v2_64", "judge_v1_128")


def test_the_docs_table_is_the_record() -> None:
    table = docs_table("### A full run with the v2 grammar")
    assert set(table) == set(ROWS)
    for row, name in ROWS.items():
        expected = []
        for column in COLUMNS:
            shipped = "shipped" + column.removeprefix("judge")
            # "shipped": the file shipped when the run was made (replaced since).
            shipped_figures = RECORD[shipped]["figures"]
            expected += [shown(shipped_figures, name), shown(RECORD[column]["figures"], name)]
        assert table[row] == expected, row


def test_the_time_and_the_reason_it_was_not_shipped_follow_from_the_record() -> None:
    seconds = RECORD["phase_seconds"]
    assert set(seconds) == {"train", "decoder", "evaluate", "judge"}
    assert RECORD["total_minutes"] == round(sum(seconds.values()) / 60, 1) <= 90
    text = (DOCS / "dali-tiny.md").read_text()
    assert f"**{RECORD['total_minutes']} min** in all" in text
    assert RECORD["evaluation"]["accuracy"]["shape"] < 0.90  # issue 3's target: not shippable
    assert not RECORD["evaluation"]["meets_targets"]["shape"]
