"""Hooks of the AISDiff plugin: frozen modules in training, the cost of testing."""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from torch.nn.parallel import DistributedDataParallel

from priors.errors import AisdiffError


@HOOKS.register_module()
class FreezeModulesHook(Hook):
    """Keep named submodules fixed for the whole run (no gradients, norm layers in eval mode), e.g. to train
    only the mask heads on a given detector: `custom_hooks=[dict(type='FreezeModulesHook',
    modules=['backbone', 'neck', 'rpn_head', 'roi_head.bbox_head'])]`."""

    def __init__(self, modules: Sequence[str]) -> None:
        if isinstance(modules, str) or not modules:
            raise AisdiffError(f"FreezeModulesHook: modules={modules!r}; give a list of submodule names "
                               "such as ['backbone', 'neck']")
        self.modules = list(modules)
        self._frozen = []

    def before_train(self, runner) -> None:
        model = runner.model
        if isinstance(model, DistributedDataParallel) and not model.find_unused_parameters:
            # DDP registered these parameters for reduction when it wrapped the model; frozen, they never get
            # gradients, which DDP only tolerates when it looks for unused parameters
            raise AisdiffError("FreezeModulesHook under distributed training needs model_wrapper_cfg="
                               "dict(type='MMDistributedDataParallel', find_unused_parameters=True)")
        model = model.module if is_model_wrapper(model) else model
        named = dict(model.named_modules())
        missing = [name for name in self.modules if name not in named]
        if missing:
            children = ", ".join(name for name, _ in model.named_children())
            raise AisdiffError(f"FreezeModulesHook: the model has no submodule {', '.join(missing)} "
                               f"(its top-level modules: {children}); fix `modules` in the config")
        self._frozen = [named[name] for name in self.modules]
        count = 0
        for module in self._frozen:
            for param in module.parameters():
                param.requires_grad_(False)
                count += param.numel()
        runner.logger.info(f"FreezeModulesHook: {count} parameters of {', '.join(self.modules)} frozen")

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        for module in self._frozen:  # the loop calls model.train() before every iteration
            module.eval()


@dataclass
class TestCost:
    """What a test loop cost in this process: images, seconds, and seconds computing DiffSP priors."""

    __test__ = False  # (not a pytest class)

    images: int
    seconds: float
    diffsp_seconds: float

    def line(self) -> str:
        per_image = self.seconds / max(self.images, 1)
        share = self.diffsp_seconds / self.seconds if self.seconds else 0.0
        return (f"test cost: {self.images} images in {self.seconds:.1f} s, {per_image:.2f} s per image, "
                f"{100 * share:.0f}% of it in DiffSP")


@HOOKS.register_module()
class TestCostHook(Hook):
    """Measure the test loop: seconds per image (first batch to last, evaluation excluded; the DiffSP
    model's one-time loading at the first image included) and the share spent computing DiffSP priors
    (on-the-fly providers), logged at the end and kept as `cost` (`aisdiff test` adds it to its report)."""

    __test__ = False
    priority = "VERY_LOW"

    def __init__(self) -> None:
        self.cost: TestCost | None = None

    @staticmethod
    def diffsp_seconds(runner) -> float:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        provider = getattr(getattr(model, "roi_head", None), "test_prior", None)
        return provider.diffsp_seconds() if provider is not None else 0.0

    def before_test_epoch(self, runner) -> None:
        self._images, self._diffsp = 0, self.diffsp_seconds(runner)
        self._start = self._end = time.perf_counter()

    def after_test_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self._images += len(outputs or ())
        self._end = time.perf_counter()

    def after_test_epoch(self, runner, metrics=None) -> None:  # (after the evaluation: not timed)
        diffsp = self.diffsp_seconds(runner) - self._diffsp
        self.cost = TestCost(self._images, self._end - self._start, diffsp)
        runner.logger.info(self.cost.line())
