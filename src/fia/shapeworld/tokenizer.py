"""ShapeWorld's byte-level CLIP BPE tokenizer, with merges learned here.

The vocabulary holds every byte symbol alone and as an end of word
(``"a</w>"``), the two special tokens, and the symbols made by merges that a
tiny BPE trainer learns over the caption words, until every ShapeWorld word is
a single token. Any other text still tokenizes, falling back to bytes.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ..testing import byte_symbols
from .vocab import ATTRIBUTES, COLORS, OBJECTS, PLACE_NAMES, STYLE_NAMES

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MODEL_MAX_LENGTH = 20

# words of the caption templates besides the factor names
TEMPLATE_WORDS = (
    "a an the of on in near by style image photo picture painting fire with and"
).split()


def caption_words() -> list[str]:
    words = set(TEMPLATE_WORDS) | set(COLORS) | set(PLACE_NAMES) | {s.lower() for s in STYLE_NAMES}
    for name, syns in OBJECTS.items():
        words.add(name)
        words.update(syns)
    for attr, phrases in ATTRIBUTES.items():
        words.add(attr)
        for p in phrases:
            words.update(p.split())
    return sorted(words)


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Greedy BPE over the word list (each word once), until every word is
    one symbol. Ties break on the pair's text, so the result is deterministic."""
    table = byte_symbols()
    seqs = [[table[b] for b in w.encode("utf-8")] for w in words]
    for s in seqs:
        s[-1] = s[-1] + "</w>"
    merges: list[tuple[str, str]] = []
    while True:
        counts: Counter = Counter()
        for s in seqs:
            for a, b in zip(s, s[1:]):
                counts[(a, b)] += 1
        if not counts:
            break
        best = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merges.append(best)
        joined = best[0] + best[1]
        for i, s in enumerate(seqs):
            out, j = [], 0
            while j < len(s):
                if j + 1 < len(s) and (s[j], s[j + 1]) == best:
                    out.append(joined)
                    j += 2
                else:
                    out.append(s[j])
                    j += 1
            seqs[i] = out
    return merges


def build_tokenizer_files(folder: str | Path, model_max_length: int = MODEL_MAX_LENGTH) -> Path:
    """Write vocab.json, merges.txt and the tokenizer config into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(byte_symbols().values())
    vocab: dict[str, int] = {}
    for s in symbols:
        vocab[s] = len(vocab)
    for s in symbols:
        vocab[s + "</w>"] = len(vocab)
    merges = learn_merges(caption_words())
    for a, b in merges:
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def load_tokenizer(folder: str | Path, model_max_length: int = MODEL_MAX_LENGTH):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=model_max_length)


def make_tokenizer(folder: str | Path, model_max_length: int = MODEL_MAX_LENGTH):
    """Build the tokenizer files into ``folder``, load and save it there."""
    build_tokenizer_files(folder, model_max_length)
    tok = load_tokenizer(folder, model_max_length)
    tok.save_pretrained(str(folder))
    return tok
