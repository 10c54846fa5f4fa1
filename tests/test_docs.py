"""The documentation cannot drift from the code: every command block of README.md and docs/ is marked with
how it is checked, the `run` blocks run here in page order (at reduced sizes), links resolve, and the
README stays short and free of working notes."""
from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from helpers import BIN, coco_pair_files, hub_cache

from priors import synthetic
from priors.models import TINY_MODEL_DIR

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
HUB_ID = "stable-diffusion-v1-5/stable-diffusion-inpainting"
# How a block is checked: `run` here; `rehearsal` by test_rehearsal.py; `ci` by .ci/run (make lint, make
# test, which runs make setup) and test_demo.py (make demo); `gpu` and `cluster` differ from a run block of
# the same page only in the launcher; `network` (downloads) and `docker` (images: linted by test_docker.py)
# cannot run here.
MARKS = {"run", "rehearsal", "ci", "gpu", "cluster", "network", "docker", "record"}
CI_COMMANDS = {"make setup", "make test", "make lint", "make demo", "source .venv/bin/activate"}
# what the tests run in place of the pages' sizes (each must be found on its page)
SMALL_DATA = ("--train-images 100 --val-images 25", "--train-images 3 --val-images 2")
TWO_ITERATIONS = ("--work-dir work_dirs/residual\n",
                  "--work-dir work_dirs/residual --cfg-options train_cfg.max_iters=2\n")
SHRINK = {
    "datasets.md": [("--layout kins ", "--layout kins --train-images 3 --val-images 2 ")],
    "precompute.md": [SMALL_DATA],
    "train_test.md": [SMALL_DATA, TWO_ITERATIONS],
    "inference.md": [SMALL_DATA, TWO_ITERATIONS],
}


@dataclass
class Block:
    page: Path
    line: int
    mark: str | None
    lang: str
    body: str


def blocks(page: Path) -> list[Block]:
    """The page's fenced bash and python blocks, each with the `<!-- docs-test: MARK -->` (or `<!--
    rehearsal: ... -->`) comment on the line before it."""
    lines = page.read_text().splitlines()
    found = []
    for i, line in enumerate(lines):
        fence = re.fullmatch(r"\s*```(bash|python)", line)
        if not fence:
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        indent = len(line) - len(line.lstrip())
        body = "\n".join(x[indent:] for x in lines[i + 1:end]) + "\n"
        before = lines[i - 1] if i else ""
        mark = re.fullmatch(r"\s*<!-- (?:docs-test: ([a-z]+)|(rehearsal): [a-z]+) -->", before)
        found.append(Block(page, i + 1, mark and (mark.group(1) or mark.group(2)), fence.group(1), body))
    return found


def commands(body: str) -> list[str]:
    """The block's commands: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    return [c.split(" #")[0].strip() for c in joined.splitlines() if c.strip() and not c.startswith("#")]


def signature(command: str) -> tuple[str, str, frozenset[str]] | None:
    """What a command runs, whatever launches it: (the `aisdiff` subcommand or mmdet tool, its config if any,
    its option names); None for a command that runs neither."""
    found = re.search(r"(?:-m pipeline|aisdiff) ([a-z-]+)(.*)", command)
    tool = re.search(r"(?:dist_)?(train|test)\.(?:py|sh)(.*)", command)
    if not (found or tool):
        return None
    name, rest = (found.group(1), found.group(2)) if found else (f"tools/{tool.group(1)}", tool.group(2))
    config = re.search(r"configs/\S+\.py", rest)
    return name, config.group(0) if config else "", frozenset(re.findall(r"(--[a-z][a-z_-]*)", rest))


def test_every_command_block_says_how_it_is_checked():
    unmarked = [f"{b.page.relative_to(REPO)}:{b.line} ({b.mark})" for p in PAGES for b in blocks(p)
                if b.mark not in MARKS]
    assert not unmarked, f"blocks without a known <!-- docs-test: MARK --> ({sorted(MARKS)}): {unmarked}"


def test_ci_network_and_docker_blocks_hold_only_such_commands():
    allowed = {"ci": lambda c: c in CI_COMMANDS,
               "network": lambda c: c.startswith(("hf download", "export ")),
               "docker": lambda c: c.startswith("docker ")}
    wrong = [(str(b.page.relative_to(REPO)), c) for p in PAGES for b in blocks(p) if b.mark in allowed
             for c in commands(b.body) if not allowed[b.mark](c)]
    assert not wrong
    ci = (REPO / ".ci" / "run").read_text()
    assert "make lint" in ci and "make test" in ci
    assert "demo.sh" in (REPO / "tests" / "test_demo.py").read_text()


def test_gpu_and_cluster_blocks_differ_from_a_run_block_only_in_the_launcher():
    for page in PAGES:
        tested = {signature(c) for b in blocks(page) if b.mark in ("run", "rehearsal")
                  for c in commands(b.body)}
        for block in (b for b in blocks(page) if b.mark in ("gpu", "cluster")):
            runs = [s for s in map(signature, commands(block.body)) if s]
            assert runs, f"{page.name}:{block.line}: a {block.mark} block that runs no aisdiff command"
            missing = [s for s in runs if s not in tested]
            assert not missing, (f"{page.name}:{block.line}: not the same as any run block of the page but "
                                 f"for the launcher: {missing}")


def test_readme_is_short_and_docs_hold_no_working_notes():
    assert len((REPO / "README.md").read_text().splitlines()) <= 200
    pattern = re.compile(r"\bissue \d+|\bissue #?\d+|\bsession\b|\bthis session\b|\bqueued\b", re.I)
    for page in [*PAGES, *sorted((DOCS / "research").glob("*.md"))]:
        hits = [line for line in page.read_text().splitlines() if pattern.search(line)]
        assert not hits, (page.name, hits[:3])


def test_links_and_named_files_exist():
    for page in [*PAGES, *sorted((DOCS / "research").glob("*.md"))]:
        text = page.read_text()
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if not target.startswith(("http://", "https://")):
                assert (page.parent / target).exists(), f"{page.name}: link to missing {target}"
        for path in re.findall(r"`((?:benchmarks|configs|scripts|docker|priors)/[\w./-]+\w)`", text):
            assert (REPO / path).exists() or "*" in path, f"{page.name}: names missing {path}"


def test_licence_and_citation():
    licence = (REPO / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert "END OF TERMS AND CONDITIONS" in licence and len(licence.splitlines()) > 150
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["license"] == "Apache-2.0"
    paper = citation["preferred-citation"]
    assert paper["title"] == "Amodal Instance Segmentation with Diffusion Shape Prior Estimation"
    assert "arXiv:2409.18256" in (REPO / "README.md").read_text()
    assert 'license = { text = "Apache-2.0" }' in (REPO / "pyproject.toml").read_text()


def _custom_dataset(cwd: Path) -> None:
    """What datasets.md's own-dataset steps start from: an amodal and a visible COCO file in the working
    folder, of the classes the custom config names, and their images under data/custom/images."""
    source = cwd / "source"
    synthetic.generate(source, fmt="aistron", train_images=3, val_images=1, seed=1)
    names = {"ball": "person", "box": "car", "triangle": "bicycle"}
    ann = source / "annotations" / "train.json"
    doc = json.loads(ann.read_text())
    kept = {c["id"]: names[c["name"]] for c in doc["categories"] if c["name"] in names}
    doc["categories"] = [{"id": i, "name": n} for i, n in kept.items()]
    doc["annotations"] = [a for a in doc["annotations"] if a["category_id"] in kept]
    ann.write_text(json.dumps(doc))
    coco_pair_files(ann, cwd)
    (cwd / "data" / "custom").mkdir(parents=True)
    (source / "images").rename(cwd / "data" / "custom" / "images")


def page_script(page: Path, cwd: Path) -> str:
    """The page's run blocks as one bash script, at the sizes SHRINK gives (python blocks as files)."""
    parts = ["set -euo pipefail"]
    for n, block in enumerate(b for b in blocks(page) if b.mark == "run"):
        if block.lang == "python":
            (cwd / f"block{n}.py").write_text(block.body)
            parts.append(f"python block{n}.py")
        else:
            parts.append(block.body)
    script = "\n".join(parts)
    for old, new in SHRINK.get(page.name, []):
        assert old in script, f"{page.name}: the test shrinks '{old.strip()}', which the page no longer holds"
        script = script.replace(old, new)
    return script


RUN_PAGES = sorted(p.name for p in DOCS.glob("*.md") if any(b.mark == "run" for b in blocks(p)))


@pytest.mark.slow
@pytest.mark.parametrize("name", RUN_PAGES)
def test_the_run_blocks_of_each_page_run_in_order(name, tmp_path, request, monkeypatch):
    page = DOCS / name
    (tmp_path / "configs").symlink_to(REPO / "configs")
    hf = tmp_path / "hf"
    hub_cache(TINY_MODEL_DIR, HUB_ID, hf)
    if name == "datasets.md":
        _custom_dataset(tmp_path)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HOME": str(hf),
           "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": str(REPO)}
    buckets = set(re.findall(r"s3://([a-z0-9.-]+)/", page_script(page, tmp_path)))
    if buckets:  # the page's s3:// commands write to the local S3-compatible test server
        import boto3

        for variable, value in request.getfixturevalue("s3_server").items():
            monkeypatch.setenv(variable, value)
            env[variable] = value
        for bucket in buckets:
            boto3.client("s3").create_bucket(Bucket=bucket)
    proc = subprocess.run(["bash", "-c", page_script(page, tmp_path)], capture_output=True, text=True,
                          cwd=tmp_path, env=env)
    assert proc.returncode == 0, (name, proc.stdout[-3000:], proc.stderr[-5000:])
    assert not [line for line in proc.stderr.splitlines() if line.startswith("Traceback")]


def test_shrink_rules_name_pages_with_run_blocks():
    assert set(SHRINK) <= set(RUN_PAGES)
    for name, rules in SHRINK.items():
        text = "\n".join(b.body for b in blocks(DOCS / name) if b.mark == "run")
        assert all(old in text for old, _ in rules), name
