"""Stage 2 of the pipeline: the two training stages of SPEC §5 on a run folder, ``extend``
(Lighthouse) and ``recover`` (dense), from a typed recipe, on packed tokenized data, with
exact resume, FSDP2 and context parallelism."""
