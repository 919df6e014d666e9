"""The onnx_ir passes that turn a model into a rewritten model plus a Plan.

One rewrite idea per module (``fold_batchnorm``, ``choose_layouts``...); ``pipeline`` lists
them in order. ``analyze`` stops before lowering (what ``sparsec inspect`` reports);
``run`` also lowers planned ops to ``ai.sparsec`` nodes.
"""

from .pipeline import analyze, run

__all__ = ["analyze", "run"]
