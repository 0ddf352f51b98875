"""Stage 3 of the pipeline: a run as a plain Hugging Face checkpoint (``to_hf``), verified in a
fresh process, with its model card (``model_card``), and optionally uploaded (``publish``)."""
