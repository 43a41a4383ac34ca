"""Language-model variants (module paths kept from LLaVA-NeXT for lmms-eval's imports)."""
