"""The fidelity benchmark's variants in one registry: each one's config, priors, and how it trains and tests.

A new variant is one `Variant` entry in VARIANTS; its letter is the short name run folders, records and
tables use (`--variants d j`, `d_seed0`, `(d)`), so letters are never reused.
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass

MASKS_AT_03 = "model.test_cfg.rcnn.prior_mask_thr=0.3"  # DiffSP fed the visible and occluder masks at 0.3


@dataclass(frozen=True)
class Variant:
    """One fidelity variant: what it measures and everything the benchmark runs differently for it."""

    letter: str  # its short name in run folders, records and tables
    name: str  # its row label in the tables
    what: str  # what it measures (shown by `--help`)
    config: str  # its config, under configs/aisdiff/
    prior_model: str | None = None  # the diffusion model of its DiffSP priors (train store and test)
    aisdiff: bool = True  # an AISDiff head (prior labels, `--head recommended`); False: plain Mask R-CNN
    test_only_of: str | None = None  # tests that variant's checkpoint, no training of its own
    trained_on_detections_of: str | None = None  # trains on DiffSP of that variant's train detections
    dump_options: tuple[str, ...] = ()  # --cfg-options of that dump of the train detections
    test_options: tuple[str, ...] = ()  # --cfg-options of its test
    # a DiffSP preset (priors.diffsp.PRESETS) for its test priors' settings: trained at the benchmark's
    # settings, so its test priors do not check against the training store
    test_preset: str | None = None

    @property
    def tests_differently(self) -> bool:
        """Whether its test departs from its training config (a preset or options): what it measures."""
        return bool(self.test_preset or self.test_options)


VARIANTS: dict[str, Variant] = {v.letter: v for v in (
    Variant("a", "Mask R-CNN (amodal masks)", "plain mmdet Mask R-CNN trained on amodal masks",
            "maskrcnn_r18_fpn_amodal_synthetic.py", aisdiff=False),
    Variant("b", "AISDiff, no prior", "the AISDiff head with the `none` prior",
            "aisdiff_r18_fpn_noprior_synthetic.py"),
    Variant("c", "AISDiff, random-model prior", "AISDiff, priors from the random tiny model (tiny-random)",
            "aisdiff_r18_fpn_synthetic.py", prior_model="tiny-random"),
    Variant("d", "AISDiff, trained-model prior", "AISDiff, priors from the trained tiny model (tiny)",
            "aisdiff_r18_fpn_synthetic.py", prior_model="tiny"),
    Variant("e", "AISDiff, oracle prior (GT amodal)", "AISDiff, the ground-truth amodal mask as the prior",
            "aisdiff_r18_fpn_oracle_synthetic.py"),
    Variant("f", "AISDiff, class-template prior", "AISDiff, the class template (mean train amodal mask)",
            "aisdiff_r18_fpn_template_synthetic.py"),
    Variant("g", "AISDiff, oracle shape only", "AISDiff, the oracle that knows only the shape",
            "aisdiff_r18_fpn_oracle-shape_synthetic.py"),
    Variant("h", "(d) tested on GT visible + occluder",
            "(d)'s model tested with DiffSP fed the ground truth's visible and occluder masks on the "
            "detected box: it splits (d) to (e) into what the visible branch, DiffSP and the box cost",
            "aisdiff_r18_fpn_oracle-input_synthetic.py", prior_model="tiny", test_only_of="d"),
    Variant("i", "AISDiff, trained on priors of its own detections",
            "(d) trained as it is tested: its train priors are DiffSP on the predicted visible and occluder "
            "masks of (d)'s own detections of the train split (same seed), a second round (`aisdiff test "
            "--dump-proposals` on train, the detection that finds each ground truth kept, `precompute "
            "--proposals --proposals-only`, `LoadCachedPriors(source='detections')`); ground truths (d) "
            "missed keep theirs",
            "aisdiff_r18_fpn_synthetic.py", prior_model="tiny", trained_on_detections_of="d"),
    Variant("j", "(d) tested with the fast DiffSP preset",
            "(d)'s model tested with the fast DiffSP preset's on-the-fly priors (`priors.diffsp.PRESETS"
            "['fast']`): does the cheap prior cost AP?",
            "aisdiff_r18_fpn_synthetic.py", prior_model="tiny", test_only_of="d", test_preset="fast"),
    Variant("k", "(d) tested with DiffSP fed masks at 0.3",
            "(d)'s model tested with DiffSP fed its predicted visible and occluder masks binarized at 0.3 "
            "instead of 0.5 (`test_cfg.rcnn.prior_mask_thr`): does DiffSP want more of the weak visible "
            "branch's pixels?",
            "aisdiff_r18_fpn_synthetic.py", prior_model="tiny", test_only_of="d",
            test_options=(MASKS_AT_03,)),
    Variant("l", "(i) with masks at 0.3 in training and test",
            "(i) at (k)'s threshold: trained on DiffSP of (d)'s train detections with their visible and "
            "occluder masks binarized at 0.3 (the dump's `mask_thr_binary`), tested as (k) (train as you "
            "test, at 0.3)",
            "aisdiff_r18_fpn_synthetic.py", prior_model="tiny", trained_on_detections_of="d",
            dump_options=("model.test_cfg.rcnn.mask_thr_binary=0.3",), test_options=(MASKS_AT_03,)),
)}
TEST_ONLY = [letter for letter, v in VARIANTS.items() if v.test_only_of]  # variants that train nothing


def listing() -> str:
    """The variants for `--help`, one paragraph each: letter, what it measures, config."""
    return "\n".join(textwrap.fill(f"({v.letter}) {v.what} [{v.config}]", width=100, initial_indent="  ",
                                   subsequent_indent="      ") for v in VARIANTS.values())
