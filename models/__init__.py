"""The example model zoo and the pruning helpers (installed as ``sparsec.models``).

- ``prune``: numpy magnitude pruning (unstructured, N:M, blocks, zero rows) and a torch helper.
- ``patterns``: measure density, N:M, block density and zero rows of a weight.
- ``params``: the seeded, pruned weights and inputs shared by both kinds of example.
- ``examples``: the five ONNX examples (``ALL``, ``save``).
- ``torch_examples``: torch twins of three of them (imports torch).
- ``digits``: the accuracy recipe (sklearn digits MLP, pruned, fine-tuned, compiled).

Nothing is imported here, so ``import sparsec.models.examples`` does not pull in torch.
"""
