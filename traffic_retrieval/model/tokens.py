"""Texts to token tensors with a model's own tokenizer (open_clip's BPE, or an HF tokenizer).

open_clip's ``SimpleTokenizer`` remembers the BPE split of every distinct word it has
seen, in a dict that only grows, and splits a word in time quadratic in its length;
the search service tokenizes whatever its clients send. So, for that tokenizer,
``tokenize`` (the one way texts become tokens: training, predict, index, serve)
bounds both: the word cache keeps the ``MAX_CACHED_WORDS`` most recently used words,
and a text is cut to what can reach the model: its first ``context_length`` words
(each gives at least one token, and only ``context_length`` - 2 are kept), each cut to
``MAX_WORD_CHARS`` characters. Only a word longer than that can change its tokens
(none in a caption or a query; a random string gets a shorter random split).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

MAX_CACHED_WORDS = 10_000  # ~3 MB at most; open_clip's own cache would keep every word ever seen
MAX_WORD_CHARS = 64  # longer than any caption's word; splitting a 1,000-letter word alone costs ~70 ms


class BoundedWordCache(OrderedDict):
    """open_clip's ``SimpleTokenizer.cache`` (word -> its BPE split), least recently used
    out past ``max_words``; the special tokens it starts with are never evicted. Its own
    changes are locked, but like open_clip's dict it is not for tokenizing from several
    threads at once (``QueryEncoder`` tokenizes under its lock)."""

    def __init__(self, initial: dict, max_words: int = MAX_CACHED_WORDS):
        self.pinned = frozenset(initial)
        self.max_words = max_words
        self._lock = threading.Lock()
        super().__init__(initial)  # through __setitem__: set what it uses first

    def __getitem__(self, word):
        value = super().__getitem__(word)
        with self._lock:
            if word in self:
                self.move_to_end(word)
        return value

    def __setitem__(self, word, split):
        with self._lock:
            super().__setitem__(word, split)
            while len(self) > self.max_words + len(self.pinned):
                oldest = next(key for key in self if key not in self.pinned)
                super().__delitem__(oldest)


def _is_clip_bpe(tokenizer) -> bool:
    """open_clip's ``SimpleTokenizer`` (or one like it): a word cache, a pre-tokenizing pattern and a cleaner."""
    return isinstance(getattr(tokenizer, "cache", None), dict) and hasattr(tokenizer, "pat") and callable(getattr(tokenizer, "clean_fn", None))


def bound_tokenizer(tokenizer):
    """``tokenizer`` with its word cache bounded (once; other tokenizers are returned as they are)."""
    if _is_clip_bpe(tokenizer) and not isinstance(tokenizer.cache, BoundedWordCache):
        tokenizer.cache = BoundedWordCache(tokenizer.cache)
    return tokenizer


def bounded_text(tokenizer, text: str) -> str:
    """The part of ``text`` the model can see: at most ``context_length`` words of at most
    ``MAX_WORD_CHARS`` characters each, as the tokenizer splits them (a short text as it is)."""
    if not _is_clip_bpe(tokenizer) or len(text) <= MAX_WORD_CHARS:  # too short to have more words or a longer word
        return text
    words = []
    for match in tokenizer.pat.finditer(tokenizer.clean_fn(text)):
        words.append(match.group()[:MAX_WORD_CHARS])
        if len(words) >= (getattr(tokenizer, "context_length", None) or 77):
            break
    # separated by spaces: the tokenizer splits them into the same words again (a BPE word never spans a
    # space), and cleaning what is already clean changes nothing (no HTML entity survives the spaces)
    return " ".join(words)


def tokenize(tokenizer, texts: list[str], batch_size: int = 4096):
    """``[len(texts), context_length]`` token ids, tokenised in batches (long caption lists stay in bounded memory)."""
    import torch

    if not texts:
        return torch.zeros((0, getattr(tokenizer, "context_length", 77)), dtype=torch.long)
    bound_tokenizer(tokenizer)
    texts = [bounded_text(tokenizer, text) for text in texts]
    return torch.cat([tokenizer(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)])
