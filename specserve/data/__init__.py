"""Training data: prompt sets, answer regeneration, tokenisation, and target features (cached or online)."""
