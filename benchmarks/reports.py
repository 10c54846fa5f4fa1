"""The research reports under docs/research/, written from the committed records, never typed by hand.

    python -m benchmarks.reports            # (re)write docs/research/*.md
    python -m benchmarks.reports --check    # exit 1 naming each page that differs from what the records give

Each page is its template (benchmarks/report_templates/NAME.md: prose and placeholders) with every
placeholder filled from records under benchmarks/results/, named by the aliases of RECORDS:

    {{table:NAME}}             a table of TABLES
    {{value:NAME}}             a number of VALUES
    {{command:ALIAS}}          the command that made the record, in a bash block (see shown_command)
    {{link:ALIAS}}             a link to the record;  {{date:ALIAS}}, {{machine:ALIAS}}: its header's
    {{field:ALIAS:PATH:FMT}}   a value of the record (PATH: keys and list indices joined by dots), formatted
                               (a list: each item, comma-separated)
    {{ratio:ALIAS:PATH:ALIAS:PATH:FMT}}   one value divided by another
    {{ap:ALIAS:V}}             a fidelity variant's amodal AP over its seeds, "mean ± std" in percent
    {{mean:ALIAS:V[:METRIC]}}  the mean alone;  {{seeds:ALIAS:V[:METRIC]}}: each seed's, in seed order
    {{diff:ALIAS:V:ALIAS:W[:METRIC]}}     mean of V less mean of W (as the tables round them)
    {{paired:ALIAS:V:W}}       V less W seed by seed (same record): "mean ± std" of the differences
    {{records:GLOB}}           links to every record matching GLOB under benchmarks/results/
    {{pct:ALIAS:PATH}}         a fraction of the record in percent, one decimal (as AP is shown)
    {{step:SETTING:KEY:FMT}}   a value of a DiffSP steps row (see steps_setting)
"""
from __future__ import annotations

import difflib
import functools
import json
import re
import shlex
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.fidelity import value as fidelity_value
from benchmarks.fidelity_variants import VARIANTS
from benchmarks.records import RESULTS, argument_parser

REPO = RESULTS.parents[1]
TEMPLATES = Path(__file__).resolve().parent / "report_templates"
PAGES = REPO / "docs" / "research"
AP = "amodal/AP"
PLACEHOLDER = re.compile(r"\{\{([a-z]+):([^{}]+)\}\}")
MARKDOWN_START = re.compile(r"\s*(\d+[.)]|[-+*>#|=])(\s|$)")  # what makes a wrapped line more than prose
# the records the pages cite, by alias (paths under benchmarks/results/)
FID, BAEF, C28 = "fidelity", "fidelity/detector-baef3b6a", "fidelity/detector-28b06fc2"
D383, DCFA = "fidelity/detector-383a67bb", "fidelity/detector-cfac2404"
HIGH = f"{D383}/fidelity_trained_head-recommended_variation-high"
HIGH2 = f"{DCFA}/fidelity_trained_head-recommended_variation-high"
RECORDS = {
    "prior_quality": "prior_quality/prior_quality.json",
    "variation": "shape_variation/shape_variation.json",
    "variation_thin": "shape_variation/shape_variation_thin-parts.json",
    "attention_tiny": "attention_layers/attention_layers_tiny.json",
    "attention_random": "attention_layers/attention_layers_tiny-random.json",
    "steps": "diffsp_steps/diffsp_steps.json",
    "preset_cost": "preset_cost/preset_cost.json",
    "cpu_diffsp": "diffsp_speed/cpu-2core/diffsp_tiny-random.json",
    "gpu_default": "diffsp_speed/gpu-h200/diffsp_sd15_fp16.json",
    "gpu_fast": "diffsp_speed/gpu-h200/diffsp_sd15_fp16_fast.json",
    "cpu_precompute": "precompute_speed/cpu-2core/precompute_speed.json",
    "cpu_segmenter": "segmenter_speed/cpu-2core/segmenter_speed.json",
    "trained": f"{BAEF}/fidelity_trained_head-recommended_a-b-d-f.json",
    "trained_abd": f"{BAEF}/fidelity_trained_head-recommended_a-b-d.json",
    "pinned_a": f"{BAEF}/fidelity_a.json",
    "pinned_bd": f"{BAEF}/fidelity_opts-4142a0fa_b-d.json",
    "pinned_f": f"{BAEF}/fidelity_opts-4142a0fa_f.json",
    "pinned_d0": f"{BAEF}/fidelity_opts-4142a0fa_d_seed0.json",
    "trained_d0": f"{BAEF}/fidelity_trained_opts-4142a0fa_d_seed0.json",
    "picture": "fidelity/detector-61ac3e65/fidelity_trained_head-recommended_d_seed0.json",
    "paper": f"{FID}/fidelity_three_seeds.json",
    "paper_djkh": f"{FID}/fidelity_d-j-k-h.json",
    "residual": f"{FID}/fidelity_opts-e7d9afa6_d-c-b.json",
    "concat": f"{FID}/fidelity_opts-ac785a20_d-b-c.json",
    "degraded": f"{FID}/fidelity_opts-a56c066e_d.json",
    "per_category": f"{FID}/fidelity_opts-120e7f1f_b-d.json",
    "k_thr01": f"{FID}/fidelity_test-ac2a50a7_k.json",
    "k_thr02": f"{FID}/fidelity_test-0907ee0a_k.json",
    "k_thr04": f"{FID}/fidelity_test-e4627ce3_k.json",
    "k_fast": f"{FID}/fidelity_test-2ec2ec6e_k.json",
    "c28_bd": f"{C28}/fidelity_b-d.json",
    "c28_capacity": f"{C28}/fidelity_opts-e984158d_b-d.json",
    "c28_capacity_residual": f"{C28}/fidelity_opts-cabd6906_d.json",
    "c28_a": f"{C28}/fidelity_a_seed0.json",
    "c28_residual_b": f"{C28}/fidelity_opts-cabd6906_b_seed0.json",
    "c28_kaiming_b": f"{C28}/fidelity_opts-ba211e5c_b_seed0.json",
    "c28_recommended_b": f"{C28}/fidelity_opts-4142a0fa_b_seed0.json",
    "c28_recommended_d": f"{C28}/fidelity_opts-4142a0fa_d_seed0.json",
    "high": f"{HIGH}_a-b-d-f-g.json",
    "high_h": f"{HIGH}_d-h.json",
    "high_paper": f"{D383}/fidelity_trained_variation-high_d_seed0-1.json",
    "high2_paper": f"{DCFA}/fidelity_trained_variation-high_d.json",
    "high2_seed0": f"{HIGH2}_d-i-b-f-a-l_seed0.json",
    "high2_seed1": f"{HIGH2}_d-l-b-f_seed1.json",
    "high2": f"{HIGH2}_d-i-b-f-a-l.json",
    "early_a": f"{FID}/fidelity_a_seed0.json",
    "early_db": f"{FID}/fidelity_d-b_seed0.json",
    "early_e": f"{FID}/fidelity_e_seed0.json",
    "early_j": f"{FID}/fidelity_j_seed0.json",
}
# benchmark scripts renamed since older records ran them (`python benchmarks/OLD.py`)
RENAMED = {"diffsp": "diffsp_speed", "pipeline": "precompute_speed", "segmenter": "segmenter_speed",
           "test_cost": "preset_cost"}
BUCKETS = ("none", "0-10%", "10-30%", "30-50%", ">50%")
USED: set[str] = set()  # the aliases of the records the page being rendered has loaded
TABLE_METRICS = ("amodal/AP50", "amodal/AP75", "visible/AP", "prior/IoU_occluded")  # after amodal AP
METRIC_HEADS = {"amodal/AP50": "AP50", "amodal/AP75": "AP75", "visible/AP": "visible AP",
                "prior/IoU_occluded": "test-prior IoU, occluded", "amodal/AP_agnostic": "AP, any class",
                "prior/amodal_IoU_occluded": "amodal-mask IoU, occluded"}


class ReportError(SystemExit):
    """A template that names an unknown placeholder, alias, table or value, or a record that lacks it."""


# -- records -------------------------------------------------------------------------------------------
def record_path(alias: str) -> Path:
    """The record an alias names, noted as used by the page being rendered."""
    if alias not in RECORDS:
        raise ReportError(f"unknown record alias {alias!r}; add it to benchmarks.reports.RECORDS")
    USED.add(alias)
    return RESULTS / RECORDS[alias]


@functools.cache
def read(path: Path) -> dict:
    """A record's JSON, read once."""
    return json.loads(path.read_text(encoding="utf-8"))


def load(alias: str) -> dict:
    """The record an alias names, noted as used by the page being rendered."""
    return read(record_path(alias))


def dig(data: object, path: str) -> object:
    """The value at PATH (keys and list indices joined by dots) of a record."""
    for key in path.split("."):
        data = data[int(key)] if isinstance(data, list) else data[key]
    return data


def link(alias: str) -> str:
    """A markdown link from a page under docs/research/ to the record."""
    return f"[`{record_path(alias).name}`](../../benchmarks/results/{RECORDS[alias]})"


def links(pattern: str) -> str:
    """Links to the records matching a glob under benchmarks/results/, comma-separated."""
    paths = sorted(RESULTS.glob(pattern))
    if not paths:
        raise ReportError(f"no record matches {pattern!r} under {RESULTS}")
    return ", ".join(f"[`{p.name}`](../../benchmarks/results/{p.relative_to(RESULTS).as_posix()})"
                     for p in paths)


def shown_command(alias: str) -> str:
    """The record's stored `command` as it runs today from the repository root: old script paths as their
    modules (`python benchmarks/diffsp.py` -> `python -m benchmarks.diffsp_speed`; `fidelity_table.py` run
    in the results folder -> the module with the records' paths), `--out` as the record's own path, an
    absolute work folder as `work_dirs/...`; each word quoted for bash."""
    words = load(alias)["command"].split()
    folder = record_path(alias).parent.relative_to(REPO).as_posix()
    script = re.fullmatch(r"(?:\.\./)*(?:benchmarks/)?(\w+)\.py", words[1])
    combined = bool(script) and not words[1].startswith("benchmarks/")
    if script:
        words[1:2] = ["-m", f"benchmarks.{RENAMED.get(script[1], script[1])}"]
    out = []
    for i, word in enumerate(words):
        if i and words[i - 1] == "--out":
            word = record_path(alias).relative_to(REPO).as_posix()
        elif i and words[i - 1] == "--work-dir":
            word = re.sub(r"^/\S*?/(work_dirs/)", r"\1", word)
        elif combined and word.endswith(".json"):
            name, sep, path = word.rpartition("=")
            word = f"{name}{sep}{folder}/{path}"
        out.append(word)
    return shlex.join(out)


def wrapped(command: str, width: int = 100) -> str:
    """A command over continued lines of at most `width` columns (a long word alone may pass it), an option
    kept on the line of its first value."""
    units: list[str] = []
    for word in command.split(" "):
        if units and units[-1].startswith("--") and " " not in units[-1] and not word.startswith("--"):
            units[-1] += f" {word}"
        else:
            units.append(word)
    lines = [units[0]]
    for unit in units[1:]:
        if len(lines[-1]) + 1 + len(unit) + 2 > width:
            lines.append(f"    {unit}")
        else:
            lines[-1] += f" {unit}"
    return " \\\n".join(lines)


def command_block(alias: str) -> str:
    """The record's command in a bash block, marked as the command stored in the record."""
    return f"<!-- docs-test: record -->\n```bash\n{wrapped(shown_command(alias))}\n```"


# -- fidelity records ----------------------------------------------------------------------------------
def seed_runs(alias: str, variant: str, metric: str = AP) -> dict[int, float]:
    """A variant's metric as recorded (a fraction) by seed, in seed order (runs without it left out); a
    combined record names each variant's seeds, a single run's record its one list."""
    data = load(alias)
    part, name = metric.split("/", 1)
    variant_seeds = data.get("seeds", {}).get(variant) or data.get("settings", {}).get("seeds") or []
    results = data["results"][variant]
    if len(variant_seeds) != len(results) or len(set(variant_seeds)) != len(results):
        raise ReportError(f"{alias}: ({variant}) has {len(results)} runs for the seeds {variant_seeds}: "
                          "not a fidelity record benchmarks.fidelity or fidelity_table wrote")
    values = (fidelity_value(r, part, name) for r in results)
    return {seed: v for seed, v in zip(variant_seeds, values, strict=True) if v is not None}


def runs(alias: str, variant: str, metric: str = AP) -> list[float]:
    """A variant's metric as recorded (a fraction), one value per seed in seed order (runs without it left
    out)."""
    return list(seed_runs(alias, variant, metric).values())


def spread(values: list[float]) -> str:
    """'mean ± std' (sample std) in percent, or the value alone for one run, rounded as benchmarks.fidelity's
    tables round (percent taken after the mean)."""
    if len(values) == 1:
        return number(100 * values[0])
    return f"{100 * np.mean(values):.1f} ± {100 * np.std(values, ddof=1):.1f}"


def number(x: float) -> str:
    """One decimal, never '-0.0'."""
    return f"{x:.1f}".replace("-0.0", "0.0")


def ap(alias: str, variant: str, metric: str = AP) -> str:
    return spread(runs(alias, variant, metric))


def mean(alias: str, variant: str, metric: str = AP) -> str:
    return number(100 * float(np.mean(runs(alias, variant, metric))))


def seeds(alias: str, variant: str, metric: str = AP) -> str:
    return ", ".join(number(100 * v) for v in runs(alias, variant, metric))


def diff(alias: str, variant: str, other_alias: str, other: str, metric: str = AP) -> str:
    """The difference of two means as the tables show them (each rounded first), so that prose and tables
    agree."""
    return number(float(mean(alias, variant, metric)) - float(mean(other_alias, other, metric)))


def paired(alias: str, variant: str, other: str) -> str:
    """V less W on each seed both ran (a record may hold more seeds of one variant than of another)."""
    mine, theirs = seed_runs(alias, variant), seed_runs(alias, other)
    shared = [seed for seed in mine if seed in theirs]
    if not shared:
        raise ReportError(f"{alias}: ({variant}) and ({other}) share no seed to pair")
    return spread([mine[seed] - theirs[seed] for seed in shared])


def cell(alias: str, variant: str, metric: str) -> str:
    """A table cell: the metric's 'mean ± std' over seeds, '-' where the variant has none."""
    values = runs(alias, variant, metric)
    return spread(values) if values else "-"


def variant_label(variant: str) -> str:
    return f"({variant}) {VARIANTS[variant].name}"


def variant_table(rows: list[tuple[str, str]], bold: str = "", per_seed: bool = False,
                  metrics: tuple[str, ...] = TABLE_METRICS, kinds: dict[str, str] | None = None) -> str:
    """Fidelity rows (record alias, variant): amodal AP, then `metrics` (by default AP50, AP75, visible AP and
    the test prior's IoU on occluded objects), mean ± std over seeds in percent, with the record; `bold`
    names a row's variant; `kinds` adds a description to the labels of an alias's rows (another head of the
    same variant), which are never bold."""
    kinds = kinds or {}
    head = "amodal AP (per seed)" if per_seed else "amodal AP"
    lines = [f"| variant | {head} | " + " | ".join(METRIC_HEADS[m] for m in metrics) + " | record |",
             "|---" * (len(metrics) + 3) + "|"]
    for alias, v in rows:
        main = ap(alias, v) + (f" ({seeds(alias, v)})" if per_seed else "")
        label = variant_label(v) + (f", {kinds[alias]}" if alias in kinds else "")
        label, main = (f"**{label}**", f"**{main}**") if v == bold and alias not in kinds else (label, main)
        cells = [cell(alias, v, m) for m in metrics]
        lines.append(f"| {label} | {main} | " + " | ".join(cells) + f" | {link(alias)} |")
    return "\n".join(lines)


def bucket_table(rows: list[tuple[str, str]], prefix: str = "amodal/AP_occ_") -> str:
    """A metric by occlusion rate, mean over seeds in percent, one fidelity row (alias, variant) per line."""
    lines = ["| variant | " + " | ".join(BUCKETS) + " |", "|---" * (len(BUCKETS) + 1) + "|"]
    for alias, v in rows:
        cells = [number(100 * float(np.mean(x))) if (x := runs(alias, v, prefix + b)) else "-"
                 for b in BUCKETS]
        lines.append(f"| ({v}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def lever_table(levers: list[tuple[str, str, str]]) -> str:
    """One lever per row (label, alias, variants): amodal AP of (b), (c), (d) and (d)'s visible AP."""
    lines = ["| amodal AP, three seeds | (b) no prior | (c) random-model prior | (d) trained prior | "
             "visible AP | record |", "|---|---|---|---|---|---|"]
    for label, alias, variants in levers:
        cells = [ap(alias, v) if v in variants else "" for v in "bcd"]
        visible = ap(alias, "d", "visible/AP")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {visible} | {link(alias)} |")
    return "\n".join(lines)


# -- the tables ----------------------------------------------------------------------------------------
def prior_quality_table() -> str:
    """Prior IoU with the amodal mask by instance group: the visible mask, then each setting's priors."""
    columns = load("prior_quality")["columns"]
    groups = ["occluded > 10%", "10-30%", "30-50%", ">50%", "all"]
    names = [c["name"].replace(c["model"], f"`{c['model']}`", 1) for c in columns]
    lines = ["| instances | n | visible mask | " + " | ".join(names) + " |",
             "|---" * (3 + len(columns)) + "|"]
    for g in groups:
        first = columns[0]["iou"][g]
        cells = [f"{c['iou'][g]['prior_iou']:.3f}" for c in columns]
        cells[0] = f"**{cells[0]}**"
        lines.append(f"| {g} | {first['instances']} | {first['visible_iou']:.3f} | " + " | ".join(cells)
                     + " |")
    return "\n".join(lines)


def variation_table() -> str:
    """Per instance group, on each benchmark variation: the visible mask's IoU with the amodal mask beside
    the class template's (at its best threshold) and, where measured, DiffSP's."""
    columns = load("variation")["columns"]
    groups = ["occluded > 10%", "10-30%", "30-50%", ">50%", "all"]
    header = ["instances"]
    for c in columns:
        header += [f"{c['variation']}: n", f"{c['variation']}: visible mask",
                   f"{c['variation']}: class template (t {c['template_threshold']:g})"]
        header += [f"{c['variation']}: DiffSP (`{c['diffsp']['model']}`)"] if "diffsp" in c else []
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for g in groups:
        cells = [g]
        for c in columns:
            row = c["template"][g]
            cells += [str(row["instances"]), f"{row['visible_iou']:.3f}", f"{row['prior_iou']:.3f}"]
            cells += [f"{c['diffsp']['iou'][g]['prior_iou']:.3f}"] if "diffsp" in c else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def attention_table() -> str:
    """Per attention block: `tiny`'s self lift and cross ratios beside `tiny-random`'s self lift."""
    def by_block(alias: str) -> dict[str, dict]:
        blocks: dict[str, dict] = {}
        for row in load(alias)["layers"]:
            block = re.sub(r"\.attn[12]$", "", row["layer"]).replace(".attentions.", ".attn.")
            blocks.setdefault(block, {"grid": row["grid"]}).update(row)
        return blocks

    tiny, rand = by_block("attention_tiny"), by_block("attention_random")
    keys = ("self lift", "cross hidden/bg", "cross visible/bg")
    lines = ["| block | grid | `tiny`: self lift | `tiny`: cross hidden/bg | `tiny`: cross visible/bg | "
             "`tiny-random`: self lift | `tiny-random`: cross hidden/bg |", "|---|---|---|---|---|---|---|"]
    for block, row in tiny.items():
        cells = [f"{row[k]:.2f}" if k in row else "-" for k in keys]
        cells += [f"{rand[block][k]:.2f}" if k in rand.get(block, {}) else "-" for k in keys[:2]]
        lines.append(f"| `{block}` | {row['grid']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def attention_range(alias: str, score: str, min_grid: int = 4) -> str:
    """'lowest to highest' of a per-layer attention score over layers at least `min_grid` cells wide."""
    values = [row[score] for row in load(alias)["layers"] if score in row and row["grid"] >= min_grid]
    return f"{min(values):.2f} to {max(values):.2f}"


def steps_row(r: dict, reference: dict, fast: dict) -> str:
    """One setting of the DiffSP steps sweep, the fast preset's in bold."""
    bold = "**" if r == fast else ""
    times = ", ".join(map(str, r["timesteps"]))
    buckets = " | ".join(f"{r['val_by_bucket'][b]:.3f}" for b in ("10-30%", "30-50%", ">50%"))
    return (f"| {bold}{r['steps']}{bold} | {r['timestep_spacing']} | {r['encoder']} | {r['strength']} | "
            f"{times} | {r['self_res']} | {r['cross_res']} | {r['resolution']} ({r['sd15_resolution']}) | "
            f"{bold}{r['val_iou']:.3f}{bold} | {buckets} | {r['sd15_tflops']:.2f} | "
            f"{bold}{reference['sd15_tflops'] / r['sd15_tflops']:.2f}x{bold} |")


def steps_table(full: bool) -> str:
    """The steps sweep: settings that run the whole schedule on full grids (full) or the other cuts."""
    data = load("steps")
    reference = data["rows"][0]
    rows = [r for r in data["rows"]
            if (r["strength"] == 1.0 and r["self_res"] == r["cross_res"] == reference["self_res"]) == full]
    rows.sort(key=lambda r: (r["strength"] == 1.0, r["encoder"] != "vae", -r["resolution"],
                             r["timestep_spacing"], -r["steps"], -r["strength"]))
    lines = ["| T | spacing | encoder | strength | timesteps | self | cross | px (SD-1.5 px) | val IoU | "
             "10-30% | 30-50% | >50% | SD-1.5 TFLOP/ROI | cheaper than T = 10 |", "|---" * 14 + "|"]
    return "\n".join(lines + [steps_row(r, reference, data["fast"]) for r in rows])


def steps_setting(setting: str) -> dict:
    """The sweep's row of a setting 'T,spacing,encoder[,strength]' ('fast': the preset's row), with what it
    loses against T = 10 (`loss`: overall; `worst`: overall or in any bucket) and how much cheaper it is."""
    data = load("steps")
    reference = data["rows"][0]
    if setting == "fast":
        row = data["fast"]
    else:
        steps, spacing, encoder, *strength = setting.split(",")
        found = [r for r in data["rows"] if (r["steps"], r["timestep_spacing"], r["encoder"], r["strength"])
                 == (int(steps), spacing, encoder, float(strength[0]) if strength else 1.0)
                 and r["self_res"] == r["cross_res"] == reference["self_res"]]
        if len(found) != 1:
            raise ReportError(f"{setting!r} names {len(found)} rows of {RECORDS['steps']}")
        row = found[0]
    losses = [reference["val_by_bucket"][b] - row["val_by_bucket"][b] for b in reference["val_by_bucket"]]
    loss = reference["val_iou"] - row["val_iou"]
    return {**row, "loss": loss, "worst": max([loss, *losses]),
            "cheaper": reference["sd15_tflops"] / row["sd15_tflops"]}


def diffsp_time_ratio() -> float:
    """How many times less time per image DiffSP itself takes at test with `fast` than with the default."""
    default, fast = load("preset_cost")["rows"]
    return default["s_per_image"] * default["diffsp_share"] / (fast["s_per_image"] * fast["diffsp_share"])


def preset_cost_table() -> str:
    """Test time per image and DiffSP's share, per preset."""
    lines = ["| preset | s per image | DiffSP's share | amodal AP |", "|---|---|---|---|"]
    for r in load("preset_cost")["rows"]:
        lines.append(f"| {r['preset']} | {r['s_per_image']:.2f} | {r['diffsp_share']:.0%} | "
                     f"{100 * r['amodal_AP']:.1f} |")
    return "\n".join(lines)


def speed_rows(alias: str, label: str = "") -> list[str]:
    """A DiffSP speed record's variants: ROIs/s, s per ROI, peak memory and cost against plain denoising."""
    results = load(alias)["results"]
    names = {"a": "(a) naive", "b": "(b) plain denoising (SDPA, no capture)",
             "c": "(c) ours (batched DiffSP)"}
    plain = results["b"]["rois_per_s"]
    return [f"| {label}{names[v]} | {r['rois_per_s']:.2f} | {1 / r['rois_per_s']:.3f} | {r['peak_mb']:.0f} | "
            f"{plain / r['rois_per_s']:.2f}x |" for v, r in results.items()]


def cpu_diffsp_table() -> str:
    head = ["| variant | ROIs/s | s per ROI | peak RSS (MB) | cost vs plain |", "|---|---|---|---|---|"]
    return "\n".join(head + speed_rows("cpu_diffsp"))


def gpu_diffsp_table() -> str:
    head = ["| preset, variant | ROIs/s | s per ROI | peak CUDA memory (MB) | cost vs plain |",
            "|---|---|---|---|---|"]
    return "\n".join(head + speed_rows("gpu_default", "default (T 10, VAE): ")
                     + speed_rows("gpu_fast", "`fast` (T 2 trailing, small encoder): "))


def precompute_table() -> str:
    head = ["| ROIs | launch | ROIs/s (wall clock, start-up included) | ROIs/s (job's summary) | "
            "peak RSS of a process (MB) |", "|---|---|---|---|---|"]
    return "\n".join(head + [f"| {r['scale']} = {r['rois']} | {r['launch']} | {r['wall_rois_per_s']:.1f} | "
                             f"{r['job_rois_per_s']:.1f} | {r['peak_rss_mb']:.0f} |"
                             for r in load("cpu_precompute")["rows"]])


def segmenter_table() -> str:
    ms = load("cpu_segmenter")["iteration_ms"]
    parts = [("whole iteration (synthetic R18-FPN, batch 2)", ms["iteration"]),
             ("fetch cached priors (`LoadCachedPriors`, 2 images)", ms["fetch"]),
             ("warp to 2 x 128 positive proposals (`CachedPriors`)", ms["warp"]),
             ("fetch + warp", ms["fetch"] + ms["warp"])]
    lines = ["| part of a training iteration | ms | share |", "|---|---|---|"]
    return "\n".join(lines + [f"| {name} | {x:.1f} | {x / ms['iteration']:.2%} |" for name, x in parts])


def ratio(alias: str, path: str, other_alias: str, other_path: str) -> float:
    return float(dig(load(alias), path)) / float(dig(load(other_alias), other_path))


def fetch_warp_share() -> float:
    ms = load("cpu_segmenter")["iteration_ms"]
    return (ms["fetch"] + ms["warp"]) / ms["iteration"]


def memory_growth() -> float:
    """Peak RSS of the one-process run on 4N ROIs over that on N: 1 means flat."""
    rows = [r for r in load("cpu_precompute")["rows"] if r["launch"] == "1 process"]
    return rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]


def rate(alias: str, variant: str) -> float:
    """A DiffSP speed record's ROIs per second for a variant."""
    return load(alias)["results"][variant]["rois_per_s"]


def speed_ratio_table() -> str:
    """The ratios measured within one run each, against their targets: what the speed report leads with."""
    at_most, at_least = (lambda x, t: x <= t), (lambda x, t: x >= t)
    rows = [  # (what, record, value, shown as, target, how it is met)
        ("DiffSP, ours against plain denoising (cost)", "cpu_diffsp",
         rate("cpu_diffsp", "b") / rate("cpu_diffsp", "c"), "{:.2f}x", 1.25, at_most),
        ("DiffSP, ours against the naive baseline (ROIs/s)", "cpu_diffsp",
         rate("cpu_diffsp", "c") / rate("cpu_diffsp", "a"), "{:.1f}x", 5.0, at_least),
        ("DiffSP on SD-1.5's architecture, ours against plain (cost), default preset", "gpu_default",
         rate("gpu_default", "b") / rate("gpu_default", "c"), "{:.2f}x", 1.10, at_most),
        ("the same, `fast` preset", "gpu_fast",
         rate("gpu_fast", "b") / rate("gpu_fast", "c"), "{:.2f}x", 1.10, at_most),
        ("prior job, peak memory on 4N ROIs against N", "cpu_precompute", memory_growth(), "{:.2f}x", 1.10,
         at_most),
        ("cached priors' fetch + warp, share of a training iteration", "cpu_segmenter", fetch_warp_share(),
         "{:.2%}", 0.03, at_most),
    ]
    lines = ["| ratio | measured | target | met | machine | record |", "|---|---|---|---|---|---|"]
    for name, alias, value, shown, target, met in rows:
        bound = ("<= " if met is at_most else ">= ") + shown.format(target)
        verdict = "yes" if met(value, target) else "**no**"
        lines.append(f"| {name} | {shown.format(value)} | {bound} | {verdict} | {load(alias)['machine']} | "
                     f"{link(alias)} |")
    return "\n".join(lines)


def trained_table() -> str:
    return variant_table([("trained", v) for v in "abfd"], bold="d", per_seed=True)


def pinned_frozen_table() -> str:
    return variant_table([("pinned_a", "a"), ("pinned_bd", "b"), ("pinned_f", "f"), ("pinned_bd", "d")],
                         bold="d", per_seed=True)


PAPER_ORDER = "abcfdjiklghe"


def paper_table() -> str:
    return variant_table([("paper", v) for v in PAPER_ORDER])


HIGH_ROWS = [("high", v) for v in "abfdg"]
HIGH_METRICS = ("amodal/AP50", "amodal/AP75", "amodal/AP_agnostic", "visible/AP", "prior/IoU_occluded")


def high_table() -> str:
    """The recommended head's variants, then (d) with the paper's head (its config's own)."""
    return variant_table(HIGH_ROWS + [("high_paper", "d")], bold="d", per_seed=True, metrics=HIGH_METRICS,
                         kinds={"high_paper": "the paper's head"})


def high_h_table() -> str:
    """(d) beside (h), its checkpoint tested with DiffSP fed the true visible and occluder masks."""
    return variant_table([("high_h", "d"), ("high_h", "h")], per_seed=True,
                         metrics=HIGH_METRICS + ("prior/amodal_IoU_occluded",))


HIGH2_ROWS = [("high2", v) for v in "abfdil"]  # the recommended head on the second detector


def high_second_table() -> str:
    """The second detector's runs: the recommended head's rows on one seed, the paper's head on three."""
    return variant_table(HIGH2_ROWS + [("high2_paper", "d")], per_seed=True,
                         metrics=HIGH_METRICS, kinds={"high2_paper": "the paper's head"})


def test_options(options: list[str] | tuple[str, ...]) -> str:
    """Test options as a table shows them: the last part of each key, with its value."""
    pairs = (option.split("=", 1) for option in options)
    return ", ".join(f"`{key.rsplit('.', 1)[-1]}={value}`" for key, value in pairs)


def k_threshold_table() -> str:
    """(k)'s amodal AP against the test options of its DiffSP input (the threshold its predicted masks are
    binarized at; (d) is the same checkpoint at the test's own mask threshold)."""
    rows = [(test_options(load(alias)["settings"]["test_options"]), alias, "k")
            for alias in ("k_thr01", "k_thr02")]
    rows += [(f"{test_options(VARIANTS['k'].test_options)}: (k)", "paper", "k"),
             (test_options(load("k_thr04")["settings"]["test_options"]), "k_thr04", "k"),
             ("none: (d), masks at the test's `mask_thr_binary`", "paper", "d"),
             (f"{test_options(load('k_fast')['settings']['test_options'])} (and masks at 0.3)", "k_fast",
              "k")]
    lines = ["| DiffSP's input masks: test options | amodal AP | record |", "|---|---|---|"]
    return "\n".join(lines + [f"| {label} | {ap(alias, v)} | {link(alias)} |" for label, alias, v in rows])


def levers_table() -> str:
    return lever_table([
        ("the paper's head, `multiply` (features x gate x prior)", "paper", "bcd"),
        ("`residual`: features x (1 + gate x prior)", "residual", "bcd"),
        ("`concat`: prior and the predicted visible and occluder masks as inputs", "concat", "bcd"),
        ("`DegradedPriors` in training (drop 0.2, morph 0.3, shift 0.3)", "degraded", "d"),
        ("per-category amodal masks (`class_agnostic_amodal=False`)", "per_category", "bd"),
    ])


TABLES: dict[str, Callable[[], str]] = {
    "prior_quality": prior_quality_table,
    "variation": variation_table,
    "attention": attention_table,
    "steps": functools.partial(steps_table, True),
    "steps_other": functools.partial(steps_table, False),
    "preset_cost": preset_cost_table,
    "speed_ratios": speed_ratio_table,
    "cpu_diffsp": cpu_diffsp_table,
    "gpu_diffsp": gpu_diffsp_table,
    "precompute": precompute_table,
    "segmenter": segmenter_table,
    "trained": trained_table,
    "trained_buckets": lambda: bucket_table([("trained", v) for v in "abfd"]),
    "pinned_frozen": pinned_frozen_table,
    "pinned_frozen_buckets": lambda: bucket_table([("pinned_a", "a"), ("pinned_bd", "b"), ("pinned_f", "f"),
                                                   ("pinned_bd", "d")]),
    "paper": paper_table,
    "paper_buckets": lambda: bucket_table([("paper", v) for v in PAPER_ORDER]),
    "k_threshold": k_threshold_table,
    "high": high_table,
    "high_buckets": lambda: bucket_table(HIGH_ROWS + [("high_h", "h")]),
    "high_prior_buckets": lambda: bucket_table(HIGH_ROWS[1:] + [("high_h", "h")], "prior/IoU_occ_"),
    "high_h": high_h_table,
    "high_second": high_second_table,
    "high2_buckets": lambda: bucket_table(HIGH2_ROWS),
    "high2_prior_buckets": lambda: bucket_table(HIGH2_ROWS[1:], "prior/IoU_occ_"),
    "levers": levers_table,
}
def template_share(b: str, d: str, f: str) -> str:
    """What the class template (f) adds over no prior (b), as a share of what the trained prior (d) adds."""
    means = {v: np.mean(runs(alias, v)) for alias, v in ((b, "b"), (d, "d"), (f, "f"))}
    return f"{(means['f'] - means['b']) / (means['d'] - means['b']):.0%}"


VALUES: dict[str, Callable[[], str]] = {
    "template_share_trained": lambda: template_share("trained", "trained", "trained"),
    "template_share_frozen": lambda: template_share("pinned_bd", "pinned_bd", "pinned_f"),
    "fetch_warp_share": lambda: f"{fetch_warp_share():.2%}",
    "memory_growth": lambda: f"{memory_growth():.2f}",
    "diffsp_time_ratio": lambda: f"{diffsp_time_ratio():.1f}",
    "high_lowest": lambda: number(100 * min(min(runs(alias, v)) for alias, v in HIGH_ROWS)),
    "tiny_cross": lambda: attention_range("attention_tiny", "cross hidden/bg"),
    "tiny_self": lambda: attention_range("attention_tiny", "self lift"),
    "random_cross": lambda: attention_range("attention_random", "cross hidden/bg"),
}


# -- filling a template --------------------------------------------------------------------------------
def fill(kind: str, args: list[str]) -> str:
    """The text of one placeholder."""
    simple = {"command": command_block, "link": link, "date": lambda a: load(a)["date"][:10],
              "machine": lambda a: load(a)["machine"], "ap": ap, "mean": mean, "seeds": seeds, "diff": diff,
              "paired": paired, "records": links}
    if kind == "table":
        return TABLES[args[0]]()
    if kind == "value":
        return VALUES[args[0]]()
    if kind == "field":
        found = dig(load(args[0]), args[1])
        items = found if isinstance(found, list) else [found]
        return ", ".join(format(x, args[2]) for x in items)
    if kind == "pct":
        return number(100 * float(dig(load(args[0]), args[1])))
    if kind == "step":
        return format(steps_setting(args[0])[args[1]], args[2])
    if kind == "ratio":
        return format(ratio(*args[:4]), args[4])
    return simple[kind](*args)


def reflow(text: str, width: int = 110) -> str:
    """Prose paragraphs and list items rewrapped at `width` columns once placeholders are filled; headings,
    tables, comments and code blocks kept as they are."""
    out: list[str] = []
    paragraph: list[str] = []
    fenced = False

    def flush() -> None:
        if paragraph:
            indent = "  " if paragraph[0].startswith("- ") else ""
            words = " ".join(line.strip() for line in paragraph)
            lines = textwrap.wrap(words, width, subsequent_indent=indent, break_long_words=False,
                                  break_on_hyphens=False)
            out.append(lines[0])
            for line in lines[1:]:  # (a line markdown would read as a list item or a quote joins the last)
                if MARKDOWN_START.match(line):
                    out[-1] += " " + line.strip()
                else:
                    out.append(line)
            paragraph.clear()

    for line in text.splitlines():
        fenced ^= line.startswith("```")
        kept = fenced or line.startswith(("```", "#", "|", "<!--")) or not line.strip()
        if kept or line.startswith("- "):
            flush()
        if kept:
            out.append(line)
        else:
            paragraph.append(line)
    flush()
    return "\n".join(out) + "\n"


def render(template: Path) -> tuple[str, set[str]]:
    """The page a template gives, and the aliases of the records it used."""
    USED.clear()

    def replace(match: re.Match) -> str:
        kind, args = match[1], match[2].split(":")
        try:
            return fill(kind, args)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ReportError(f"{template.name}: {match[0]}: {type(exc).__name__}: {exc}") from None

    body = reflow(PLACEHOLDER.sub(replace, template.read_text(encoding="utf-8")))
    header = ("<!-- generated by `python -m benchmarks.reports` from benchmarks/results/ (the records it "
              f"links) and benchmarks/report_templates/{template.name}: edit the template, not this page "
              "-->\n")
    return header + body, set(USED)


def pages() -> dict[str, tuple[str, set[str]]]:
    """Every report page by file name: its text and the record aliases it used."""
    return {t.name: render(t) for t in sorted(TEMPLATES.glob("*.md"))}


def main() -> None:
    parser = argument_parser(__doc__, __spec__.name)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a page differs")
    parser.add_argument("--out", type=Path, default=PAGES, help="where the pages go (default: docs/research)")
    args = parser.parse_args()
    stale = []
    for name, (text, _) in pages().items():
        page = args.out / name
        old = page.read_text(encoding="utf-8") if page.is_file() else ""
        if args.check and old != text:
            stale.append(name)
            sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), text.splitlines(True), f"{page}",
                                                       f"{page} (from the records)", n=1))
        elif not args.check:
            page.parent.mkdir(parents=True, exist_ok=True)
            page.write_text(text, encoding="utf-8")
    if stale:
        sys.exit(f"out of date, rerun `python -m benchmarks.reports`: {', '.join(stale)}")
    print("up to date" if args.check else f"written to {args.out}")


if __name__ == "__main__":
    main()
