"""The evaluate stage: score cluster rasters against ground truth (``stage``: the stage
function ``evaluate``), from streamed count tables and the cluster-to-class matching
(``counts``), into report.json and report.md (``report``) and PNG figures (``figures``).

``from geoseg.evaluate import evaluate`` and ``geoseg.evaluate(...)`` are the stage function.
"""

from geoseg.evaluate.stage import evaluate

__all__ = ["counts", "evaluate", "figures", "report", "stage"]
