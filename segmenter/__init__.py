"""MMDetection 3.x plugin for AISDiff: importing it registers its modules (`custom_imports=['segmenter']`).

Registered: the `AmodalDataset`; the transforms `LoadAmodalAnnotations`, `LoadCachedPriors`,
`AmodalResize`, `AmodalRandomFlip`, `AmodalRandomCrop`, `AmodalPad`, `PackAmodalInputs`; the `AISDiff`
detector, `AISDiffRoIHead` and `AISDiffMaskHead`; the prior providers `CachedPriors`, `OnTheFlyPriors`,
`ProposalCachePriors` and `NoPriors`; the `AmodalMetric`; the `FreezeModulesHook`.
"""
from . import checkpoint  # noqa: F401  (registers the trusted local checkpoint loader for mmengine)
from .datasets import AmodalDataset
from .hooks import FreezeModulesHook
from .mask_head import AISDiffMaskHead
from .metric import AmodalMetric
from .prior_providers import CachedPriors, NoPriors, OnTheFlyPriors, ProposalCachePriors
from .roi_head import AISDiff, AISDiffRoIHead
from .transforms import (
                         AmodalPad,
                         AmodalRandomCrop,
                         AmodalRandomFlip,
                         AmodalResize,
                         LoadAmodalAnnotations,
                         LoadCachedPriors,
                         PackAmodalInputs,
)

__all__ = [
    "AISDiff", "AISDiffMaskHead", "AISDiffRoIHead", "AmodalDataset", "AmodalMetric", "AmodalPad", "AmodalRandomCrop",
    "AmodalRandomFlip", "AmodalResize", "CachedPriors", "FreezeModulesHook", "LoadAmodalAnnotations", "LoadCachedPriors", "NoPriors",
    "OnTheFlyPriors", "PackAmodalInputs", "ProposalCachePriors",
]
