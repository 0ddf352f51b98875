"""Stage 4 of the pipeline: evaluate a model (dense) through lm-eval (``runner``), on offline
long-context data built for its tokenizer (``builders``), and write the report (``report``)."""
