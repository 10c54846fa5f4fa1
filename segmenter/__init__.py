"""MMDetection 3.x plugin for AISDiff (importing it registers the modules)."""
