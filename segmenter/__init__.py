"""MMDetection 3.x plugin for AISDiff: importing it registers its modules (`custom_imports=['segmenter']`).

Registered: the `AmodalDataset`; the transforms `LoadAmodalAnnotations`, `LoadCachedPriors`,
`ContentImageId`, `AmodalResize`, `AmodalRandomFlip`, `AmodalRandomCrop`, `AmodalPad`, `PackAmodalInputs`;
the `AISDiff` detector, `AISDiffRoIHead` and `AISDiffMaskHead`; the prior providers (TASK_UTILS)
`CachedPriors`, `OnTheFlyPriors`, `ProposalCachePriors`, `NoPriors`, `OraclePriors` and the controls
`DegradedPriors`, `ClassTemplatePriors` and `OracleInputPriors`; the `AmodalMetric`; the `FreezeModulesHook`;
the `AmodalLocalVisualizer`. Besides registering, the import only allow-lists the types mmengine writes into
checkpoints for torch's safe (weights-only) unpickler (see `segmenter.checkpoint`).
"""
from .checkpoint import allow_mmengine_checkpoints
from .datasets import AmodalDataset
from .detector import AISDiff
from .hooks import FreezeModulesHook
from .mask_head import AISDiffMaskHead
from .metric import AmodalMetric
from .prior_context import PriorContext
from .prior_controls import ClassTemplatePriors, DegradedPriors, OracleInputPriors
from .prior_providers import (
    CachedPriors,
    NoPriors,
    OnTheFlyPriors,
    OraclePriors,
    PriorProvider,
    ProposalCachePriors,
)
from .roi_head import AISDiffRoIHead
from .transforms import (
    AmodalPad,
    AmodalRandomCrop,
    AmodalRandomFlip,
    AmodalResize,
    ContentImageId,
    LoadAmodalAnnotations,
    LoadCachedPriors,
    PackAmodalInputs,
)
from .visualization import AmodalLocalVisualizer

allow_mmengine_checkpoints()

__all__ = [
    "AISDiff", "AISDiffMaskHead", "AISDiffRoIHead", "AmodalDataset", "AmodalLocalVisualizer", "AmodalMetric",
    "AmodalPad", "AmodalRandomCrop", "AmodalRandomFlip", "AmodalResize", "CachedPriors",
    "ClassTemplatePriors", "ContentImageId", "DegradedPriors", "FreezeModulesHook", "LoadAmodalAnnotations",
    "LoadCachedPriors", "NoPriors",
    "OnTheFlyPriors", "OracleInputPriors", "OraclePriors", "PackAmodalInputs", "PriorContext",
    "PriorProvider", "ProposalCachePriors",
]
