"""Text encoder: offline loading, fast cached embedding, fine-tuning (torch + transformers only)."""
from causalrec.text.encoder import EncoderError, TextEncoder, default_model_path

__all__ = ["EncoderError", "TextEncoder", "default_model_path"]
