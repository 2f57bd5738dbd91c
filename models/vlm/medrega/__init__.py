"""MedRegA (Wang et al., ICLR 2025, ``xmed-lab/MedRegA``): a region-aware bilingual medical
multimodal LLM on InternVL-Chat-V1-2."""
