"""PromptMRG (Jin et al., AAAI 2024): diagnosis-driven prompts for chest-radiograph report
generation. ``tree`` (configs, module tree; no torch), ``net`` (the modules), ``preprocess``,
``text`` (tokenizer), ``generate`` (prefix and decoding), ``engine`` (the ``promptmrg`` family).
Torch is imported only when an engine or a tree is built."""
