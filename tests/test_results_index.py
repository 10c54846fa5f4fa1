"""benchmarks/results/README.md indexes the committed benchmark records: every record is listed once, every
listed file exists, and a fidelity record's name and folder say what it ran (option tags, detector)."""
from __future__ import annotations

import json
import re

from benchmarks.fidelity import options_digest
from benchmarks.records import RESULTS

INDEX = RESULTS / "README.md"
ROW = re.compile(r"^\| `([^`]+\.json)` \|", re.MULTILINE)  # a table row's first cell: the record's path


def test_the_index_lists_every_record_once_and_nothing_else():
    listed = ROW.findall(INDEX.read_text(encoding="utf-8"))
    on_disk = {path.relative_to(RESULTS).as_posix() for path in RESULTS.rglob("*.json")}
    assert sorted(on_disk - set(listed)) == [], "records missing from benchmarks/results/README.md"
    assert sorted(set(listed) - on_disk) == [], "the index lists files that do not exist"
    assert len(listed) == len(set(listed)), "a record is listed twice"


def test_a_fidelity_record_is_named_and_filed_by_what_it_ran():
    """`opts-` and `test-` digest the record's --cfg-options and --test-options, `variation-high` names its
    --variation; `detector-XXXXXXXX/` holds records whose shared detector's weights digest starts with
    XXXXXXXX."""
    for path in (RESULTS / "fidelity").rglob("*.json"):
        record = json.loads(path.read_text(encoding="utf-8"))
        for tag, key in (("opts", "cfg_options"), ("test", "test_options")):
            match = re.search(rf"_{tag}-([0-9a-f]{{8}})_", path.name)
            assert match is None or match[1] == options_digest(record["settings"][key]), path
        variation = record["settings"].get("variation", "low")  # (older records: the low benchmark)
        assert ("_variation-high_" in path.name) == (variation == "high"), path
        if path.parent.name.startswith("detector-"):
            prefix = path.parent.name.removeprefix("detector-")
            assert record["detector_weights_sha256"].startswith(prefix), path
