"""sd_core.tokenizer against transformers' CLIPTokenizer, id for id.

The reference is built from the shipped OpenAI merges file by this test's own converter
(vocab.json + merges.txt, using transformers' byte-to-unicode table, not ours).

transformers 5.x's CLIPTokenizer is backed by the `tokenizers` library and no longer runs
ftfy (its normalizer is NFC, whitespace collapse and lowercase only). OpenAI CLIP and the
transformers 4.x tokenizer that SD v1.x pipelines used clean the text with ftfy first, and so
does ours; the reference is therefore fed `ftfy.fix_text` + `html.unescape` twice of the prompt,
the library calls themselves, then Python's lowercase (see `reference_ids`), and does the rest
(NFC, whitespace collapse, regex pre-tokenization, byte-to-unicode, BPE, BOS/EOS, padding).
"""

from __future__ import annotations

import gzip
import html
import json
import random
import time
from pathlib import Path

import ftfy
import pytest
import torch
import transformers

from sd_core.tokenizer import DEFAULT_BPE_FILE, CLIPTokenizer
from tests.clip_reference import write_hf_files

CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]

HAND_WRITTEN = [
    "",
    " ",
    "a photo of a cat",
    "A Photo Of A CAT",
    "a photo of a cat" + " " * 40,
    "  leading and trailing   spaces  ",
    "tabs\tand\nnew\r\nlines\n\n\nmany",
    "non\u00a0breaking\u2003em space\u3000ideographic",
    # accents, composed and decomposed (ftfy normalizes to NFC)
    "Café crème brûlée, naïve façade, Ångström, São Paulo",
    "Cafe\u0301 cre\u0300me",
    "Zürich Straße Œuvre æsir ðe þorn ø",
    # CJK, Cyrillic, Greek, Arabic, Hebrew, Indic, Thai, Korean
    "日本語のテキスト、東京タワー",
    "中文提示词：一只猫坐在桌子上",
    "한국어 고양이 사진",
    "Привет мир, кот на крыше",
    "ΟΔΟΣ οδός Αθήνα",
    "مرحبا بالعالم قطة",
    "שלום עולם",
    "हिन्दी में बिल्ली",
    "ภาษาไทย แมว",
    # emoji, ZWJ sequences, skin tones, flags, variation selectors
    "a cat 🐱 with a hat 🎩",
    "family 👩\u200d👩\u200d👧\u200d👦 portrait",
    "👍🏽 thumbs up, 🏳️\u200d🌈 flag, 🇯🇵 flag",
    "❤️ love ✨ sparkles ☕",
    # punctuation and symbols
    "Hello, world! How are you?!?!...",
    "masterpiece, best quality, ultra-detailed, 8k, (((high resolution)))",
    "--ar 16:9 --v 5 --q 2",
    "price: $1,299.99 — 50% off; #1 @home ~ ^ * _ = + | \\ / ` {braces}",
    "ellipsis… “curly quotes” ‘single’ «guillemets» – dash",
    # digits and numbers
    "1234567890",
    "3.14159 2.71828 1e-5 -42 +7 0x1F",
    "1920x1080 4k 60fps f/1.8 35mm",
    "²³ ½ ¼ Ⅻ ① ٣ ۵ १२३",
    # URLs, paths, e-mail
    "https://example.com/path/to/image.png?size=512&seed=42#frag",
    "www.artstation.com/artwork/abc123 user@example.org C:\\images\\out.png",
    # HTML entities (ftfy + html.unescape twice)
    "salt &amp; pepper",
    "black &amp;amp; white",
    "thrice &amp;amp;amp; escaped",
    "<p>tags stop ftfy unescaping &amp;amp; so html.unescape does it</p>",
    "&lt;lora:x:1&gt; &quot;quoted&quot; &#39;apos&#39; &#x263A; &nbsp;space &copy;",
    "<b>bold</b> &amp; <i>italic</i>",
    # mojibake that ftfy repairs, ligatures, full-width forms
    "cafÃ© crÃ¨me",
    "The Mona Lisa doesnâ€™t have eyebrows.",
    "ﬁne ﬂower ﬀ",
    "ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３",
    # apostrophes and contractions
    "don't can't won't it's we're they've I'm you'll he'd",
    "DON'T IT'S WE'RE",
    "it’s the cat’s hat",
    "'s 't 're 've 'm 'll 'd ''quoted'' rock'n'roll",
    # AUTOMATIC1111 prompt syntax
    "(masterpiece:1.2), (best quality:1.1), [low quality], {{extra}}",
    "a [cat|dog] in a [forest:city:0.5]",
    "<lora:detailTweaker:0.8> <hypernet:anime:1> portrait",
    "photo BREAK landscape AND sky :: 2",
    "embedding:EasyNegative, (worst quality:1.4)",
    # the special-token strings inside a prompt
    "a<|endoftext|>b",
    "<|startoftext|> hello <|endoftext|>",
    # control characters, soft hyphen, zero-width characters
    "soft\u00adhyphen zero\u200bwidth bell\x07 null\x00 del\x7f",
    "bom\ufeffmark",
    # long prompts: truncated to 75 ids, EOS kept last
    "a very long prompt " * 30,
    ", ".join(f"tag{i}" for i in range(120)),
    "supercalifragilisticexpialidocious " * 10,
    "🐱" * 100,
    "x" * 500,
]

SUBJECTS = [
    "cat",
    "astronaut",
    "castle",
    "robot",
    "dragon",
    "old man",
    "girl",
    "forest",
    "city",
    "mountain lake",
    "spaceship",
    "samurai",
    "teapot",
    "lighthouse",
    "portrait of a woman",
    "cyberpunk street",
    "bowl of fruit",
    "fox",
    "owl",
    "waterfall",
]
MODIFIERS = [
    "highly detailed",
    "digital painting",
    "artstation",
    "concept art",
    "sharp focus",
    "illustration",
    "octane render",
    "unreal engine",
    "8k",
    "4K UHD",
    "trending on ArtStation",
    "by Greg Rutkowski",
    "by Alphonse Mucha",
    "studio lighting",
    "volumetric fog",
    "bokeh",
    "golden hour",
    "oil on canvas",
    "watercolor",
    "photorealistic",
    "cinematic",
    "35mm film",
    "f/1.4",
    "hdr",
    "low poly",
    "isometric",
    "pixel art",
    "anime style",
    "ukiyo-e",
]
EXTRAS = [
    "Café",
    "naïve",
    "Ærøskøbing",
    "東京",
    "Москва",
    "القاهرة",
    "🐱",
    "🎨✨",
    "👩\u200d💻",
    "&amp;",
    "it's",
    "don't",
    "doesnâ€™t",
    "“quoted”",
    "ﬁne",
    "ｗｉｄｅ",
    "100%",
    "$5",
    "#42",
    "(red:1.3)",
    "[blue|green]",
    "<lora:style:0.7>",
    "\t",
    "\n",
    "...",
    "?!",
    "x2",
    "1990s",
    "http://a.b/c?d=1",
    "e\u0301",
    "Ω",
    "½",
]


def generated_prompts(count: int, seed: int = 1234) -> list[str]:
    """Deterministic SD-style prompts mixing plain tags with the awkward cases above."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        parts = [rng.choice(["a", "an", "the", "A", "photo of a", ""]) + " " + rng.choice(SUBJECTS)]
        for _ in range(rng.randint(0, 12)):
            parts.append(rng.choice(MODIFIERS))
            if rng.random() < 0.3:
                parts.append(rng.choice(EXTRAS))
            if rng.random() < 0.15:
                parts[-1] = f"({parts[-1]}:{rng.uniform(0.5, 1.6):.2f})"
            if rng.random() < 0.1:
                parts[-1] = parts[-1].upper()
        separator = rng.choice([", ", ",", " ", " , ", ",\n", " | "])
        prompts.append(separator.join(parts) * rng.choice([1, 1, 1, 2, 4]))
    return prompts


PROMPTS = HAND_WRITTEN + generated_prompts(300)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("clip_tokenizer")
    write_hf_files(directory)
    return directory


@pytest.fixture(scope="module")
def reference(hf_dir: Path) -> transformers.CLIPTokenizer:
    ref = transformers.CLIPTokenizer.from_pretrained(hf_dir)
    # CLIPTokenizerFast(vocab_file=..., merges_file=...) silently yields a 2-token vocabulary in
    # transformers 5.x; only trust a reference that loaded the whole vocabulary.
    assert len(ref) == 49408
    assert ref.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"]) == [49406, 49407]
    return ref


def reference_ids(reference: transformers.CLIPTokenizer, text: str) -> list[int]:
    # Lowercased here too: Python's str.lower (OpenAI's and transformers 4.x's) writes a word-final
    # capital sigma as "ς", the `tokenizers` Lowercase normalizer as "σ" ("ΟΔΟΣ" differs).
    cleaned = html.unescape(html.unescape(ftfy.fix_text(text))).lower()
    out = reference(cleaned, padding="max_length", max_length=77, truncation=True)
    return list(out["input_ids"])


@pytest.fixture(scope="module")
def tok() -> CLIPTokenizer:
    return CLIPTokenizer.default()


def test_vocabulary_layout(tok: CLIPTokenizer) -> None:
    assert tok.vocab_size == 49408
    assert len(tok.ranks) == 48894
    assert tok.encoder["<|startoftext|>"] == 49406
    assert tok.encoder["<|endoftext|>"] == 49407
    assert tok.encoder["!"] == 0
    assert tok.encoder["a</w>"] == 320


def test_known_ids(tok: CLIPTokenizer) -> None:
    ids = tok.encode("a photo of a cat")
    assert ids == CAT_IDS + [49407] * 70
    assert tok.tokenize("a photo of a cat") == CAT_IDS[1:-1]


def test_matches_transformers_on_many_prompts(
    tok: CLIPTokenizer, reference: transformers.CLIPTokenizer
) -> None:
    assert len(PROMPTS) >= 360
    mismatches = []
    for text in PROMPTS:
        ours, theirs = tok.encode(text), reference_ids(reference, text)
        assert len(ours) == 77
        if ours != theirs:
            mismatches.append((text, ours, theirs))
    assert not mismatches, f"{len(mismatches)} prompts differ, first: {mismatches[0]}"
    # The set really exercises truncation, non-ASCII and the clean-up.
    assert sum(tok.count_tokens(t) > 75 for t in PROMPTS) >= 20
    assert sum(not t.isascii() for t in PROMPTS) >= 100


def test_clean_up_applies_ftfy_and_html(tok: CLIPTokenizer) -> None:
    assert tok.tokenize("salt &amp; pepper") == tok.tokenize("salt & pepper")
    assert tok.tokenize("black &amp;amp; white") == tok.tokenize("black & white")
    # ftfy unescapes once (and not at all in text with "<"), html.unescape twice more.
    assert tok.tokenize("black &amp;amp;amp; white") == tok.tokenize("black & white")
    assert tok.tokenize("<b> &amp;amp; </b>") == tok.tokenize("<b> & </b>")
    assert tok.tokenize("cafÃ© crÃ¨me") == tok.tokenize("café crème")
    assert tok.tokenize("it’s") == tok.tokenize("it's") == [585, 568]
    assert tok.tokenize("Cafe\u0301") == tok.tokenize("café")
    assert tok.tokenize("ﬁne") == tok.tokenize("fine")
    assert tok.tokenize("  A\t\tPHOTO\n") == tok.tokenize("a photo")
    assert tok.tokenize("") == [] and tok.tokenize(" \n\t ") == []


def test_truncation_keeps_final_eos(tok: CLIPTokenizer) -> None:
    text = " ".join(["cat"] * 100)
    assert tok.count_tokens(text) == 100
    ids = tok.encode(text)
    assert ids == [49406] + [2368] * 75 + [49407]


def test_special_token_strings(tok: CLIPTokenizer) -> None:
    assert tok.tokenize("a<|endoftext|>b") == [320, 49407, 321]
    assert tok.tokenize("<|startoftext|>") == [49406]


def test_from_vocab_and_merges_gives_same_ids(tok: CLIPTokenizer, hf_dir: Path) -> None:
    other = CLIPTokenizer.from_vocab_and_merges(hf_dir / "vocab.json", hf_dir / "merges.txt")
    assert other.vocab_size == 49408
    assert other.encoder == tok.encoder and other.ranks == tok.ranks
    for text in PROMPTS[::3]:
        assert other.encode(text) == tok.encode(text)


def test_from_bpe_file_reads_plain_text(tok: CLIPTokenizer, tmp_path: Path) -> None:
    plain = tmp_path / "bpe.txt"
    with gzip.open(DEFAULT_BPE_FILE, "rt", encoding="utf-8") as f:
        plain.write_text(f.read(), encoding="utf-8")
    other = CLIPTokenizer.from_bpe_file(plain)
    assert other.encoder == tok.encoder
    assert other.encode("a photo of a cat") == CAT_IDS + [49407] * 70


def test_bad_files_raise(tmp_path: Path, hf_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.gz"):
        CLIPTokenizer.from_bpe_file(tmp_path / "missing.gz")
    short = tmp_path / "short.txt"
    short.write_text("#version: 0.2\ni n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="merge lines"):
        CLIPTokenizer.from_bpe_file(short)
    vocab = json.loads((hf_dir / "vocab.json").read_text(encoding="utf-8"))
    del vocab["<|endoftext|>"]
    broken = tmp_path / "vocab.json"
    broken.write_text(json.dumps(vocab), encoding="utf-8")
    with pytest.raises(ValueError, match="<\\|endoftext\\|>"):
        CLIPTokenizer.from_vocab_and_merges(broken, hf_dir / "merges.txt")
    bad_merges = tmp_path / "merges.txt"
    bad_merges.write_text("#version: 0.2\ni n\nthree symbols here\n", encoding="utf-8")
    with pytest.raises(ValueError, match="merge 2: expected two symbols"):
        CLIPTokenizer.from_vocab_and_merges(hf_dir / "vocab.json", bad_merges)
    bad_merges.write_text("#version: 0.2\nq z\n", encoding="utf-8")
    with pytest.raises(ValueError, match="'qz', which is not in the vocab"):
        CLIPTokenizer.from_vocab_and_merges(hf_dir / "vocab.json", bad_merges)
    not_a_dict = tmp_path / "list.json"
    not_a_dict.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ValueError, match="JSON object"):
        CLIPTokenizer.from_vocab_and_merges(not_a_dict, hf_dir / "merges.txt")


def test_decode_round_trip(tok: CLIPTokenizer) -> None:
    rng = random.Random(7)
    words = [w for w in " ".join(SUBJECTS + MODIFIERS).lower().split() if w.isalpha()]
    for _ in range(50):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 20)))
        assert tok.decode(tok.tokenize(text)) == text
    assert tok.decode(tok.tokenize("東京 café")) == "東京 café"
    assert tok.decode(tok.encode("a cat"), skip_special_tokens=True) == "a cat"
    assert tok.decode(tok.encode("a cat")).startswith("<|startoftext|>a cat <|endoftext|>")
    with pytest.raises(ValueError, match="49408"):
        tok.decode([49408])


def test_count_tokens(tok: CLIPTokenizer) -> None:
    assert tok.count_tokens("") == 0
    assert tok.count_tokens("a photo of a cat") == 5
    assert tok.count_tokens("1984") == 4  # digits are single tokens
    for text in PROMPTS[:50]:
        assert tok.count_tokens(text) == len(tok.tokenize(text))


def test_encode_batch(tok: CLIPTokenizer) -> None:
    batch = tok.encode_batch(["a photo of a cat", "", "x " * 200])
    assert batch.shape == (3, 77) and batch.dtype == torch.int64
    assert batch[0].tolist() == tok.encode("a photo of a cat")
    assert batch[1].tolist() == [49406] + [49407] * 76
    assert batch[2, -1].item() == 49407
    assert tok.encode_batch([]).shape == (0, 77)
    with pytest.raises(ValueError, match="single str"):
        tok.encode_batch("a cat")


def test_default_is_cached_and_fast(tok: CLIPTokenizer) -> None:
    assert CLIPTokenizer.default() is CLIPTokenizer.default() is tok
    text = "a majestic castle on a hill at sunset, highly detailed, digital painting, by greg rutkowski"
    tok.encode(text)
    runs = 200
    start = time.perf_counter()
    for _ in range(runs):
        tok.encode(text)
    per_call = (time.perf_counter() - start) / runs
    # Well under a millisecond on a quiet machine; the bound leaves room for a busy CI.
    assert per_call < 2e-3, f"encode took {per_call * 1e6:.0f} µs"
