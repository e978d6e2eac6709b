"""Embedding analysis of blind-SR encoders (``scripts/analyze_embedding.py``).

``grid``: the (HR image x degradation) grid and its embeddings; ``stats``: variance
decomposition, cross-validated linear probes, codebook usage, PCA; ``plots``: the figures;
``analysis``: one analysis end to end. Import with the repository root on ``sys.path``.
"""
