"""Text: the Llama-3 tokenizer CSM uses (tokenizer.py), spoken-form normalisation (normalize.py) and
splitting long text into pieces (split.py)."""

from .normalize import normalize_text
from .split import split_sentences, split_text
from .tokenizer import TextTokenizer, build_tiny_tokenizer

__all__ = ["TextTokenizer", "build_tiny_tokenizer", "normalize_text", "split_sentences", "split_text"]
