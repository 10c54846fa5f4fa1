"""MMDetection 3.x plugin for AISDiff: importing it registers its modules (`custom_imports=['segmenter']`)."""
from . import checkpoint  # noqa: F401  (registers the trusted local checkpoint loader for mmengine)
