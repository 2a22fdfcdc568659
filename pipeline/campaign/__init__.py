"""Localized campaign creative: prompts and copy per market, copy drawn on the image, product
photos composited onto generated backgrounds, brand style (LoRA adapters, palette)."""
