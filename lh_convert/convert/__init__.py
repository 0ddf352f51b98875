"""Stage 1 of the pipeline: find a model, change its RoPE and context, record the Lighthouse
settings, and write a run folder (``convert``); register Lighthouse with transformers and
load a run's model back (``run_model``)."""
