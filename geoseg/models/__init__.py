"""Trained models as files and versions: bundles (``bundle``: weights + model.json),
cluster identity across versions (``align``), the registry of versions with its
promotion policy (``registry``) and the names users give clusters (``names``).
"""

__all__ = ["align", "bundle", "names", "registry"]
