"""docs/dali-tiny.md's table of the shipped file's run is its record, docs/dali-tiny-run.json,
and the record's judge figures are the ones the shipped file carries."""

from __future__ import annotations

import json
import statistics

import sd_core
from sd_core.tensor_source import TensorSource
from tests.training.run_tables import DOCS, ROWS, docs_table, shown

RECORD = json.loads((DOCS / "dali-tiny-run.json").read_text())
COLUMNS = ("v1_64", "v2_64", "v1_128")  # beside each, the previous file's


def test_the_docs_table_is_the_record() -> None:
    table = docs_table("### The shipped file: dali-tiny v2")
    assert set(table) == set(ROWS)
    for row, name in ROWS.items():
        expected = []
        for column in COLUMNS:
            expected += [shown(RECORD["previous_" + column]["figures"], name),
                         shown(RECORD["judge_" + column]["figures"], name)]  # fmt: skip
        assert table[row] == expected, row


def test_the_record_is_what_the_shipped_file_carries() -> None:
    metadata = TensorSource(sd_core.BUILTIN_MODEL_PATH).metadata
    judge = json.loads(metadata["dali_judge"])
    assert RECORD["judge_v1_64"]["figures"] == judge["figures"]
    assert RECORD["judge_v2_64"]["figures"] == judge["v2"]["figures"]
    assert RECORD["judge_v1_128"]["figures"] == judge["128"]["figures"]
    assert RECORD["judge_v1_128"]["size"] == 128 and RECORD["judge_v2_64"]["size"] == 64
    # The run that made it: its command is the file's, and it took at most issue 17's 90 min.
    assert metadata["dali_training_command"] == RECORD["command"]
    seconds = RECORD["phase_seconds"]
    assert set(seconds) == {"train", "decoder", "evaluate", "judge"}
    assert RECORD["total_minutes"] == round(sum(seconds.values()) / 60, 1) <= 90


def test_the_speed_and_negative_prompt_figures_in_the_docs_follow_from_the_record() -> None:
    text = (DOCS / "dali-tiny.md").read_text()
    bench = RECORD["bench_seconds_per_image"]
    this, previous = (
        statistics.median(bench["this_file"]),
        statistics.median(bench["previous_file"]),
    )
    assert f"{this:.3f} s for this file, {previous:.3f} s for the previous one" in text
    assert this <= 0.4
    negative = RECORD["negative_prompt_by_guidance"]
    assert negative["this_file"]["3"]["negative_moved"] == 0.0625  # "6.2 % of them at guidance 3"
    assert negative["this_file"]["7"]["negative_moved"] == 0.3125
    assert negative["previous_file"]["3"]["negative_moved"] == 0.4375
