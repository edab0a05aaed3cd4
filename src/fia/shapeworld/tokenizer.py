"""Byte-level CLIP BPE tokenizers built offline: ShapeWorld's, and a bare one for tests.

The vocabulary holds every byte symbol alone and as an end of word
(``"a</w>"``), then the symbols made by the merges, then the two special
tokens. ShapeWorld's tokenizer learns its merges with a tiny BPE trainer over
the caption words, until every ShapeWorld word is a single token; the bare
tokenizer (:func:`byte_level_tokenizer`, used by the tiny test pipelines of
:mod:`fia.testing`) has no merges. Any text tokenizes, falling back to bytes.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from .vocab import ATTRIBUTES, COLORS, PLACE_NAMES, SHAPEWORLD, STYLE_NAMES, World

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MODEL_MAX_LENGTH = 20

# words of the caption templates besides the factor names
TEMPLATE_WORDS = (
    "a an the of on in near by style image photo picture painting fire with and"
).split()


def byte_symbols() -> dict[int, str]:
    """The byte -> printable-character table of byte-level BPE (GPT-2, CLIP).

    Printable Latin-1 bytes map to themselves; the others are shifted to
    code points from 256 on, so every byte has a visible, distinct symbol.
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
    keep += list(range(ord("\xae"), ord("\xff") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def caption_words(world: World = SHAPEWORLD) -> list[str]:
    """Every word the captions of ``world`` use."""
    words = set(TEMPLATE_WORDS) | set(COLORS) | set(PLACE_NAMES) | {s.lower() for s in STYLE_NAMES}
    for name, syns in world.objects.items():
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


def write_bpe_files(folder: str | Path, merges: Sequence[tuple[str, str]] = ()) -> Path:
    """Write a byte-level BPE tokenizer's ``vocab.json`` and ``merges.txt`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(byte_symbols().values())
    vocab: dict[str, int] = {}
    for s in symbols:
        vocab[s] = len(vocab)
    for s in symbols:
        vocab[s + "</w>"] = len(vocab)
    for a, b in merges:
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def build_tokenizer_files(folder: str | Path, world: World = SHAPEWORLD) -> Path:
    """Write the vocab.json and merges.txt of a world's tokenizer (merges learned over its caption words) into ``folder``."""
    return write_bpe_files(folder, learn_merges(caption_words(world)))


def byte_level_tokenizer(model_max_length: int = 77):
    """A ``CLIPTokenizer`` over the byte symbols alone (no merges): any text tokenizes, nothing is downloaded."""
    # the files are read while loading, so the folder can go right after
    with tempfile.TemporaryDirectory(prefix="fia-tok-") as tmp:
        return load_tokenizer(write_bpe_files(tmp), model_max_length)


def load_tokenizer(folder: str | Path, model_max_length: int = MODEL_MAX_LENGTH):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=model_max_length)


def make_tokenizer(folder: str | Path, model_max_length: int = MODEL_MAX_LENGTH, world: World = SHAPEWORLD):
    """Build a world's tokenizer files into ``folder``, load and save it there."""
    build_tokenizer_files(folder, world)
    tok = load_tokenizer(folder, model_max_length)
    tok.save_pretrained(str(folder))
    return tok
