"""Prefect flows of geoseg: thin tasks over the library, Dask task runner, STAC catalogs.

Entry points (prefect.yaml): flows/ingest.py:ingest_flow, flows/train.py:train_flow,
flows/segment.py:segment_flow, flows/pipeline.py:pipeline_flow.
"""
