"""benchmarks.fidelity_table: records of several fidelity runs combine into one table only when their runs
compare (same setup, detector and configs); a seed run twice keeps the later run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import fidelity_table as table

SETUP = {"iters": 300, "detector": "frozen", "pretrain_iters": 2000, "scale": 256, "steps": 10, "tau": 0,
         "cfg_options": []}


def write(path: Path, date: str, results: dict, seeds: list[int], config: str = "c1", run: dict | None = None,
          **extra) -> Path:
    settings = {**SETUP, "work_dir": f"/w/{path.stem}", "variants": list(results), "seeds": seeds,
                **extra.pop("settings", {})}
    runs = {v: [{"config_sha256": config, **(run or {})} for _ in seeds] for v in results}
    kept = {} if extra.pop("old", False) else {"run_settings": runs}  # (old records kept no run settings)
    record = {"date": date, "settings": settings, "results": results, "detector_weights_sha256": "ab" * 32,
              **kept, **extra}
    path.write_text(json.dumps({k: v for k, v in record.items() if v is not None}))
    return path


def ap(value: float) -> dict:
    return {"amodal/AP": value}


def test_records_of_one_setup_combine_and_a_repeated_seed_keeps_the_later_run(tmp_path):
    old = write(tmp_path / "old.json", "2026-11-30 10:00 UTC", {"d": [ap(0.34), ap(0.35)],
                                                                 "b": [ap(0.3), ap(0.31)]}, [0, 1])
    new = write(tmp_path / "new.json", "2026-12-01 09:00 UTC", {"d": [ap(0.36), ap(0.33)]}, [1, 2],
                detector_weights_sha256="ab" * 32)
    combined = table.combine([new, old], ["d"])  # (given in any order: the date decides)
    assert list(combined["runs"]) == ["d"]
    runs = combined["runs"]["d"]
    assert {seed: m["amodal/AP"] for seed, (m, _) in runs.items()} == {0: 0.34, 1: 0.36, 2: 0.33}
    assert runs[1][1] == str(new) and runs[0][1] == str(old)
    assert combined["replaced"] == [f"(d) seed 1: {old} -> {new}"]
    assert combined["detector"] == "ab" * 32
    assert combined["setup"] == {**SETUP, "test_options": [], "cpu_kernels": "native", "head": "paper",
                                 "variation": "low"}
    later = write(tmp_path / "later.json", "2026-12-02 09:00 UTC", {"d": [ap(0.3)]}, [3],
                  settings={"test_options": [], "head": "paper"})  # (options older records lack, at default)
    assert sorted(table.combine([old, new, later], ["d"])["runs"]["d"]) == [0, 1, 2, 3]
    assert list(table.combine([old, new], None)["runs"]) == ["b", "d"]  # every variant found, in table order


def test_records_that_do_not_compare_are_refused(tmp_path):
    base = write(tmp_path / "base.json", "2026-11-30 10:00 UTC", {"d": [ap(0.34)]}, [0],
                 detector_weights_sha256="ab" * 32)
    schedule = write(tmp_path / "iters.json", "2026-12-01 10:00 UTC", {"d": [ap(0.3)]}, [1],
                     settings={"iters": 600})
    with pytest.raises(table.RecordError, match=r"iters\.json: its runs do not compare with .*base\.json's: "
                                                r"they differ in iters \(300 against 600\)"):
        table.combine([base, schedule], None)
    detector = write(tmp_path / "det.json", "2026-12-01 10:00 UTC", {"d": [ap(0.3)]}, [1],
                     detector_weights_sha256="cd" * 32)
    with pytest.raises(table.RecordError, match="started from different detectors"):
        table.combine([base, detector], None)
    unknown = write(tmp_path / "unknown.json", "2026-12-01 10:00 UTC", {"d": [ap(0.3)]}, [1],
                    detector_weights_sha256=None)  # (a record older than the digest)
    with pytest.raises(table.RecordError, match=r"unknown\.json: records no shared detector"):
        table.combine([base, unknown], None)
    config = write(tmp_path / "cfg.json", "2026-12-01 10:00 UTC", {"d": [ap(0.3)]}, [1], config="c2")
    with pytest.raises(table.RecordError, match=r"\(d\)'s config and test settings .* the code, config or"):
        table.combine([base, config], None)
    preset = write(tmp_path / "preset.json", "2026-12-01 10:00 UTC", {"d": [ap(0.3)]}, [1],
                   run={"test_preset": {"steps": 2}})
    with pytest.raises(table.RecordError, match=r"preset\.json: \(d\)'s config and test settings"):
        table.combine([base, preset], None)
    prior_model = write(tmp_path / "model.json", "2026-12-01 10:00 UTC", {"d": [ap(0.3)]}, [1],
                        run={"priors": {"model": {"id": "tiny", "weights_sha256": "ef" * 32}}})
    with pytest.raises(table.RecordError, match=r"model\.json: \(d\)'s config and test settings"):
        table.combine([base, prior_model], None)
    pinned = write(tmp_path / "pinned.json", "2026-12-01 10:00 UTC", {"d": [ap(0.3)]}, [1],
                   settings={"cpu_kernels": "avx2"})  # (base, older than the option, ran native kernels)
    with pytest.raises(table.RecordError, match=r"differ in cpu_kernels \('native' against 'avx2'\)"):
        table.combine([base, pinned], None)
    native = write(tmp_path / "native.json", "2026-12-01 10:00 UTC", {"d": [ap(0.3)]}, [1],
                   settings={"cpu_kernels": "native"})
    assert sorted(table.combine([base, native], None)["runs"]["d"]) == [0, 1]
    high = write(tmp_path / "high.json", "2026-12-01 10:00 UTC", {"d": [ap(0.3)]}, [1],
                 settings={"variation": "high"})  # (base, older than the option, ran the low benchmark)
    with pytest.raises(table.RecordError, match=r"differ in variation \('low' against 'high'\)"):
        table.combine([base, high], None)
    with pytest.raises(table.RecordError, match="no record holds variant"):
        table.combine([base], ["a"])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(table.RecordError, match="bad.json: not a fidelity record"):
        table.combine([tmp_path / "bad.json"], None)
    short = write(tmp_path / "short.json", "2026-12-01 10:00 UTC", {"d": [ap(0.3)]}, [1, 2])
    with pytest.raises(table.RecordError, match=r"short.json: \(d\) has 1 runs for the 2 seeds \[1, 2\]"):
        table.combine([short], None)


def test_a_test_only_variant_combines_only_records_that_all_keep_or_all_lack_its_settings(tmp_path):
    """(j)'s preset is what it measures: an old record (no run settings) may have used another preset."""
    old = [write(tmp_path / f"j{seed}.json", f"2026-11-30 1{seed}:00 UTC", {"j": [ap(0.34)], "d": [ap(0.35)]},
                 [seed], old=True) for seed in (0, 1)]
    new = write(tmp_path / "new.json", "2026-12-01 10:00 UTC", {"j": [ap(0.33)], "d": [ap(0.35)]}, [2],
                run={"test_preset": {"steps": 2}})
    assert sorted(table.combine(old, ["j"])["runs"]["j"]) == [0, 1]
    assert sorted(table.combine([*old, new], ["d"])["runs"]["d"]) == [0, 1, 2]  # (d) is no test-only variant
    with pytest.raises(table.RecordError,
                       match=r"new\.json: \(j\) is tested with a preset or options that it records and "
                             r".*j0\.json does not"):
        table.combine([*old, new], ["j"])


def test_take_gives_a_variant_from_one_record_alone(tmp_path):
    """A test-only variant rerun with a new preset does not combine with its older runs; --take picks it."""
    old = write(tmp_path / "d-j.json", "2026-11-30 10:00 UTC", {"d": [ap(0.32)], "j": [ap(0.33)]}, [0],
                run={"test_preset": {"steps": 2}})
    new = write(tmp_path / "j.json", "2026-12-01 10:00 UTC", {"j": [ap(0.34)]}, [0],
                run={"test_preset": {"steps": 2, "encoder": "tiny"}})
    with pytest.raises(SystemExit, match=r"\(j\)'s config and test settings .* are not those of its runs"):
        table.combine([old, new], ["d", "j"])
    combined = table.combine([old, new], ["d", "j"], {"j": new})
    assert combined["runs"]["j"][0] == (ap(0.34), str(new))
    assert combined["runs"]["d"][0] == (ap(0.32), str(old))
    assert combined["replaced"] == []
    with pytest.raises(SystemExit, match="--take names .*other.json, which is not among the records given"):
        table.combine([old, new], ["d", "j"], {"j": tmp_path / "other.json"})
