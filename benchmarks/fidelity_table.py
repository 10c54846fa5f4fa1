"""One fidelity table from the records of several `benchmarks.fidelity` runs (e.g. seeds run in different
sessions, each with its own work folder), checked to share every setting but the variants and seeds.

    R=benchmarks/results/fidelity/detector-baef3b6a
    python -m benchmarks.fidelity_table $R/fidelity_a_seed0.json $R/fidelity_a_seed1.json ... \
        --variants a --out $R/fidelity_a.json

Each record holds, per variant, the metrics of each seed it ran (`results`, in `settings.seeds` order). A
variant's seed found in two records keeps the later record's run (by date; both are listed). Records whose
settings differ (schedule, sizes, DiffSP settings, `--cfg-options`) or whose shared detector's weights
differ or are not recorded (a detector retrained in another session differs) are refused: their runs do not
compare; so is a variant whose runs' config digests (in records that
keep each run's settings) differ. `--take VARIANT=RECORD` takes a variant's runs from that record alone (e.g.
the rerun of a test-only variant after its preset changed, beside an older record that also holds it).
Prints and writes the table as `fidelity.py` does, mean ± standard deviation over the seeds found, with the
seeds and source records of each variant.
"""
from __future__ import annotations

import json
import platform
from pathlib import Path

from benchmarks.fidelity import bucket_table, table
from benchmarks.fidelity_variants import VARIANTS
from benchmarks.records import argument_parser, record

# settings that say which runs a record holds, not how they were made
PER_RECORD = ("work_dir", "variants", "seeds")
DETECTOR_KEY = "detector_weights_sha256"
# fidelity.py options added after records were first written, with the value every older record ran with
OPTIONS_ADDED_LATER = {"test_options": [], "cpu_kernels": "native", "head": "paper", "variation": "low"}


class RecordError(SystemExit):
    """A record that cannot be combined (unreadable, another setup, another detector)."""


def read_record(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        _ = data["settings"]["seeds"], data["results"], data["date"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RecordError(f"{path}: not a fidelity record ({type(exc).__name__}: {exc}); give the JSON files "
                          "benchmarks.fidelity writes under benchmarks/results/fidelity/") from None
    seeds = data["settings"]["seeds"]
    for variant, runs in data["results"].items():
        if len(runs) != len(seeds):
            raise RecordError(f"{path}: ({variant}) has {len(runs)} runs for the {len(seeds)} seeds {seeds}: "
                              "a damaged record; rerun its command to write it again")
    return data


def setup_of(data: dict) -> dict:
    """What every combined run must share: the record's settings but the variants and seeds it ran."""
    return {**OPTIONS_ADDED_LATER, **{k: v for k, v in data["settings"].items() if k not in PER_RECORD}}


def check_config(variant: str, run_settings: list[dict], path: Path,
                 seen: dict[str, tuple[str | None, str]]) -> None:
    """Refuse a variant whose runs were made from another config (its parsed config's sha256, that of the
    checkpoint it tests, the prior model's identity, its test-only preset and options) than the same variant's
    runs in an earlier record; `seen` collects them. A record without run settings is unknown (None): passed
    over, except for a test-only variant (its preset or options are what it measures), where known and
    unknown records may differ and are not combined."""
    digests = [json.dumps([s.get("config_sha256"), s.get("checkpoint_of", {}).get("config_sha256"),
                           (s.get("priors") or {}).get("model"), s.get("test_preset"), s.get("test_options")])
               for s in run_settings]
    if not digests and variant in VARIANTS and VARIANTS[variant].tests_differently:
        digests = [None]
    for digest in digests:
        first, where = seen.setdefault(variant, (digest, str(path)))
        if digest == first:
            continue
        if None in (digest, first):
            raise RecordError(f"{path}: ({variant}) is tested with a preset or options that "
                              f"{'it' if first is None else where} records and "
                              f"{where if first is None else 'it'} does not (a record older than run "
                              "settings): they may differ; combine records of one kind only")
        raise RecordError(f"{path}: ({variant})'s config and test settings {digest} are not those of its "
                          f"runs in {where} ({first}): the code, config or preset changed between them; "
                          "rerun one of them")


def combine(paths: list[Path], variants: list[str] | None, take: dict[str, Path] | None = None) -> dict:
    """{variant: {seed: (metrics, source)}} over the records, the later record winning a repeated seed;
    plus the shared setup and detector digest. Refuses records of another setup or detector. A variant of
    `take` comes from its record alone (the others' runs of it are passed over)."""
    take = take or {}
    unknown = sorted(str(p) for p in set(take.values()) - set(paths))
    if unknown:
        raise RecordError(f"--take names {', '.join(unknown)}, which is not among the records given")
    records = sorted(((p, read_record(p)) for p in paths), key=lambda item: item[1]["date"])
    first_path, first = records[0]
    setup, detector = setup_of(first), None
    runs: dict[str, dict[int, tuple[dict, str]]] = {}
    replaced, configs = [], {}
    for path, data in records:
        diff = sorted(k for k in set(setup) | set(setup_of(data)) if setup.get(k) != setup_of(data).get(k))
        if diff:
            raise RecordError(f"{path}: its runs do not compare with {first_path}'s: they differ in "
                              + ", ".join(f"{k} ({setup.get(k)!r} against {setup_of(data).get(k)!r})"
                                          for k in diff)
                              + ". Combine records of one setup only.")
        digest = data.get(DETECTOR_KEY)
        if digest is None:
            raise RecordError(f"{path}: records no shared detector ({DETECTOR_KEY}), so its runs cannot be "
                              "shown to share one with the others: a detector retrained in another session "
                              "differs (the (d) seed 0 of two sessions: 34.6 and 32.5 AP). Combine records "
                              "of one detector; rerun the variants of this one on it")
        if detector is not None and digest != detector[0]:
            raise RecordError(f"{path}: its shared detector's weights (sha256 {digest[:12]}) are not those "
                              f"of {detector[1]} ({detector[0][:12]}): the runs started from different "
                              "detectors (one machine retrains it bit for bit, another CPU does not: see "
                              "the records' environment)")
        if detector is None:
            detector = (digest, str(path))
        for variant, metrics in data["results"].items():
            if (variants and variant not in variants) or take.get(variant, path) != path:
                continue
            check_config(variant, data.get("run_settings", {}).get(variant, []), path, configs)
            for seed, m in zip(data["settings"]["seeds"], metrics, strict=True):
                if seed in runs.setdefault(variant, {}):
                    replaced.append(f"({variant}) seed {seed}: {runs[variant][seed][1]} -> {path}")
                runs[variant][seed] = (m, str(path))
    missing = [v for v in variants or [] if v not in runs]
    if missing:
        raise RecordError(f"no record holds variant(s) {', '.join(missing)}")
    order = [v for v in (variants or VARIANTS) if v in runs]
    return {"setup": setup, "detector": detector[0] if detector else None, "replaced": replaced,
            "runs": {v: dict(sorted(runs[v].items())) for v in order}}


def main() -> None:
    parser = argument_parser(__doc__, __spec__.name)
    parser.add_argument("records", type=Path, nargs="+", help="fidelity.py's JSON records")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="(default: every one found)")
    parser.add_argument("--out", type=Path, help="write the combined record here (JSON)")
    parser.add_argument("--take", nargs="+", default=[], metavar="VARIANT=RECORD",
                        help="take a variant's runs from that record (one of those given) alone")
    args = parser.parse_args()
    take = {}
    for item in args.take:
        variant, sep, path = item.partition("=")
        if not sep or variant not in VARIANTS:
            parser.error(f"--take {item!r}: give VARIANT=RECORD, VARIANT one of {', '.join(VARIANTS)}")
        take[variant] = Path(path)
    combined = combine(args.records, args.variants, take)
    results = {v: [m for m, _ in seeds.values()] for v, seeds in combined["runs"].items()}
    seeds = {v: list(s) for v, s in combined["runs"].items()}
    sources = {v: sorted({src for _, src in s.values()}) for v, s in combined["runs"].items()}
    text = (table(results, []) + "\n\nSeeds: "
            + "; ".join(f"({v}) {s}" for v, s in seeds.items())
            + "\n\nAmodal AP by occlusion rate (mean over seeds):\n\n" + bucket_table(results)
            + "\n\nTest-prior IoU with the amodal ground truth, found ground truths by occlusion rate "
              "(mean over seeds):\n\n" + bucket_table(results, "prior/IoU_occ_"))
    print(text)
    for line in combined["replaced"]:
        print("replaced:", line)
    print("shared detector weights sha256:", combined["detector"] or "not recorded by these records")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record(
            f"{platform.machine()}; runs from the records' own machines (see sources)",
            settings=combined["setup"], detector_weights_sha256=combined["detector"], seeds=seeds,
            sources=sources, replaced=combined["replaced"], table=text, results=results), indent=1))
        print("written to", args.out)


if __name__ == "__main__":
    main()
