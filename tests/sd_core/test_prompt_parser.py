"""The A1111 prompt parser: attention weights, BREAK, escapes and extra-network tags.

Expected weights are written as the float products A1111 computes (innermost bracket first,
`[x]` as a product with 1 / 1.1), and compared exactly: the engine must get the very weights
A1111 would use.
"""

from __future__ import annotations

import dataclasses
import random
import subprocess
import sys
from pathlib import Path

import pytest

from sd_core.prompt_parser import (
    BREAK,
    Break,
    ExtraNetwork,
    PromptPart,
    Segment,
    extract_extra_networks,
    parse_prompt,
)

R = 1.1  # (x)
S = 1 / 1.1  # [x]


def seg(text: str, weight: float = 1.0) -> Segment:
    return Segment(text, weight)


# (prompt, expected parts). Every row is checked exactly, text and weight.
TABLE: list[tuple[str, list[PromptPart]]] = [
    # A1111's documented examples
    ("a (very beautiful:1.3) girl", [seg("a "), seg("very beautiful", 1.3), seg(" girl")]),
    ("(abc)", [seg("abc", R)]),
    ("[abc]", [seg("abc", S)]),
    ("((abc))", [seg("abc", R * R)]),
    ("(((abc)))", [seg("abc", R * R * R)]),
    ("[[abc]]", [seg("abc", S * S)]),
    ("(abc:0.5)", [seg("abc", 0.5)]),
    ("\\(literal\\]", [seg("(literal]")]),
    ("\\(literal\\)", [seg("(literal)")]),
    ("normal text", [seg("normal text")]),
    ("an (important) word", [seg("an "), seg("important", R), seg(" word")]),
    ("a BREAK b", [seg("a"), BREAK, seg("b")]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            seg("a "),
            seg("house", 1.3 * R * R),
            seg(" ", R),
            seg("on", S * R),
            seg(" a ", R),
            seg("hill", 0.5 * R),
            seg(", sun, ", R),
            seg("sky", R * R * R * R),
            seg(".", R),
        ],
    ),
    # nesting multiplies, innermost first
    ("((a:1.2) b)", [seg("a", 1.2 * R), seg(" b", R)]),
    ("(a (b:2) c)", [seg("a ", R), seg("b", 2.0 * R), seg(" c", R)]),
    ("a ((b:0.5)) c", [seg("a "), seg("b", 0.5 * R), seg(" c")]),
    ("a (((b:0.5))) c", [seg("a "), seg("b", 0.5 * R * R), seg(" c")]),
    ("[(a)]", [seg("a", R * S)]),
    ("([a])", [seg("a", S * R)]),
    ("((a:2):0.5)", [seg("a", 1.0)]),
    ("[a (b) c]", [seg("a ", S), seg("b", R * S), seg(" c", S)]),
    # explicit weights: spaces, signs, dots
    ("(x: 1.5 )", [seg("x", 1.5)]),
    ("(a: 2)", [seg("a", 2.0)]),
    ("(a:2 )b", [seg("a", 2.0), seg("b")]),
    ("(x:-1)", [seg("x", -1.0)]),
    ("(x:+2)", [seg("x", 2.0)]),
    ("(x:0)", [seg("x", 0.0)]),
    ("(x:.5)", [seg("x", 0.5)]),
    ("(x:1.)", [seg("x")]),
    ("a (b:1.0) c", [seg("a b c")]),
    ("(a:1.2:1.3)", [seg("a:1.2", 1.3)]),
    (
        "(masterpiece, best quality:1.2), 1girl, [blurry]",
        [seg("masterpiece, best quality", 1.2), seg(", 1girl, "), seg("blurry", S)],
    ),
    # malformed weights: text, with the round bracket's 1.1
    ("(x:abc)", [seg("x:abc", R)]),
    ("a (b:high) c", [seg("a "), seg("b:high", R), seg(" c")]),
    ("(x:1e2)", [seg("x:1e2", R)]),
    ("(x:1.2.3)", [seg("x:1.2.3", R)]),
    ("(x: 1.2.3 )", [seg("x: 1.2.3 ", R)]),
    ("(x:.)", [seg("x:.", R)]),
    ("(x:)", [seg("x:", R)]),
    ("(a:1.5]", [seg("a:1.5]", R)]),
    # a weight with no '(' open is text, ')' included
    ("a:1.5) c", [seg("a:1.5) c")]),
    ("[a:1.5)]", [seg("a:1.5)", S)]),
    ("([a:1.5)", [seg("a", 1.5 * S)]),
    ("a:b", [seg("a:b")]),
    # unbalanced brackets
    ("(abc", [seg("abc", R)]),
    ("[abc", [seg("abc", S)]),
    ("a (b", [seg("a "), seg("b", R)]),
    ("((a)", [seg("a", R * R)]),
    ("a (b [c", [seg("a "), seg("b ", R), seg("c", R * S)]),
    ("[a (b", [seg("a ", S), seg("b", R * S)]),
    ("abc)", [seg("abc)")]),
    ("abc]", [seg("abc]")]),
    (")(", [seg(")")]),
    ("a) (b", [seg("a) "), seg("b", R)]),
    ("(a]", [seg("a]", R)]),
    ("[a)", [seg("a)", S)]),
    ("()", [seg("")]),
    ("[]", [seg("")]),
    ("a () b", [seg("a  b")]),
    # escapes
    ("\\[a\\]", [seg("[a]")]),
    ("\\\\", [seg("\\")]),
    ("\\\\(a)", [seg("\\"), seg("a", R)]),
    ("\\((a)\\)", [seg("("), seg("a", R), seg(")")]),
    ("(\\(a\\))", [seg("(a)", R)]),
    ("(a\\)b)", [seg("a)b", R)]),
    ("hatsune miku \\(vocaloid\\)", [seg("hatsune miku (vocaloid)")]),
    ("a\\b", [seg("a\\b")]),
    ("a \\ b", [seg("a \\ b")]),
    ("end\\", [seg("end\\")]),
    ("\\:", [seg("\\:")]),
    # BREAK
    ("a,BREAK,b", [seg("a,"), BREAK, seg(",b")]),
    ("a\nBREAK\nb", [seg("a"), BREAK, seg("b")]),
    ("BREAK a", [BREAK, seg("a")]),
    ("a BREAK", [seg("a"), BREAK]),
    ("BREAK", [BREAK]),
    ("a BREAK BREAK b", [seg("a"), BREAK, BREAK, seg("b")]),
    ("(a BREAK b)", [seg("a", R), BREAK, seg("b", R)]),
    ("(x)BREAK(y)", [seg("x", R), BREAK, seg("y", R)]),
    ("a\\BREAK", [seg("a\\"), BREAK]),
    ("aBREAK b", [seg("aBREAK b")]),
    ("a BREAKS b", [seg("a BREAKS b")]),
    ("a break b", [seg("a break b")]),
    ("a Break b", [seg("a Break b")]),
    ("éBREAK", [seg("éBREAK")]),
    # merging of equal weights
    ("(a)(b)", [seg("ab", R)]),
    ("(a:1.1)(b)", [seg("ab", R)]),
    ("((a))(b:1.21)", [seg("a", R * R), seg("b", 1.21)]),
    ("(a:1.5) (b:1.5)", [seg("a", 1.5), seg(" "), seg("b", 1.5)]),
    ("[a][b]", [seg("ab", S)]),
    # prompt editing is not resolved here: read as brackets and text
    ("[a:b:10]", [seg("a:b:10", S)]),
    ("[a|b]", [seg("a|b", S)]),
    # unicode
    ("café (crème brûlée:1.2)", [seg("café "), seg("crème brûlée", 1.2)]),
    ("日本語 [猫]", [seg("日本語 "), seg("猫", S)]),
    ("emoji 🐱 ((🐶))", [seg("emoji 🐱 "), seg("🐶", R * R)]),
    ("ünïcödé, ✓", [seg("ünïcödé, ✓")]),
    # empty and whitespace
    ("", [seg("")]),
    ("   ", [seg("   ")]),
    ("\t\n", [seg("\t\n")]),
    ("  a  ", [seg("  a  ")]),
]


def has_syntax(prompt: str) -> bool:
    return any(c in prompt for c in "()[]\\") or "BREAK" in prompt


def test_table_is_large() -> None:
    assert len(TABLE) >= 60
    assert len({prompt for prompt, _ in TABLE}) == len(TABLE)  # no duplicate rows


@pytest.mark.parametrize(("prompt", "expected"), TABLE, ids=[repr(p) for p, _ in TABLE])
def test_parse_prompt(prompt: str, expected: list[PromptPart]) -> None:
    assert parse_prompt(prompt) == expected


def first_weight(prompt: str) -> float:
    part = parse_prompt(prompt)[0]
    assert isinstance(part, Segment)
    return part.weight


def test_weights_are_exact_floats() -> None:
    # Segment equality compares floats exactly; spell out a few that rounding would hide.
    assert first_weight("((a))") == 1.2100000000000002
    assert first_weight("[a]") == 0.9090909090909091
    assert first_weight("[[a]]") == 0.8264462809917354
    assert first_weight("((a:1.2) b)") == 1.32
    assert first_weight("(((a:0.5)))") == 0.6050000000000001


def test_a1111_documented_example_literal_weights() -> None:
    # The example in A1111's parse_prompt_attention docstring, with the numbers it prints.
    parts = parse_prompt("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")
    assert [(p.text, p.weight) for p in parts if isinstance(p, Segment)] == [
        ("a ", 1.0),
        ("house", 1.5730000000000004),
        (" ", 1.1),
        ("on", 1.0),
        (" a ", 1.1),
        ("hill", 0.55),
        (", sun, ", 1.1),
        ("sky", 1.4641000000000006),
        (".", 1.1),
    ]


WEIGHT_ONE_ROWS = [
    (prompt, expected)
    for prompt, expected in TABLE
    if all(isinstance(part, Segment) and part.weight == 1.0 for part in expected)
]


def test_weight_one_rows_exist() -> None:
    assert len(WEIGHT_ONE_ROWS) >= 25


@pytest.mark.parametrize(
    ("prompt", "expected"), WEIGHT_ONE_ROWS, ids=[repr(p) for p, _ in WEIGHT_ONE_ROWS]
)
def test_weight_one_gives_one_plain_segment(prompt: str, expected: list[PromptPart]) -> None:
    """All weights 1.0: one segment whose text is the plain prompt, so the engine can encode it
    exactly as it encodes a prompt without syntax (bit-identical images)."""
    parts = parse_prompt(prompt)
    assert len(parts) == 1
    (part,) = parts
    assert isinstance(part, Segment)
    assert part.weight == 1.0
    assert part.text == "".join(p.text for p in expected if isinstance(p, Segment))
    if not has_syntax(prompt):
        assert part.text == prompt  # untouched, whitespace included


def test_plain_prompts_are_returned_unchanged() -> None:
    alphabet = "abcxyz ABC,.!?'\"-_/:;0123456789éü日本🐱\t\n<>{}|"
    rng = random.Random(13)
    for _ in range(500):
        prompt = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        assert parse_prompt(prompt) == [Segment(prompt, 1.0)], prompt


def test_escaped_prompt_round_trips_to_its_text() -> None:
    rng = random.Random(7)
    alphabet = "ab ()[]\\:,"
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 30)))
        escaped = "".join("\\" + c if c in "()[]\\" else c for c in text)
        assert parse_prompt(escaped) == [Segment(text, 1.0)], escaped


def test_segment_and_break_types() -> None:
    part = Segment("a", 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        part.text = "b"  # type: ignore[misc]
    assert Break() == BREAK
    assert repr(BREAK) == "BREAK"
    assert not isinstance(BREAK, Segment)
    assert hash(Segment("a", 1.1)) == hash(Segment("a", 1.1))


def test_result_has_no_empty_segment_unless_prompt_is_empty() -> None:
    for prompt, _ in TABLE:
        parts = parse_prompt(prompt)
        segments = [p for p in parts if isinstance(p, Segment)]
        if parts != [Segment("", 1.0)]:
            assert all(s.text for s in segments), prompt
        for left, right in zip(parts, parts[1:], strict=False):
            if isinstance(left, Segment) and isinstance(right, Segment):
                assert left.weight != right.weight, prompt


# --- extra networks ---------------------------------------------------------------------------

EXTRA_NETWORKS: list[tuple[str, str, list[ExtraNetwork]]] = [
    ("a cat, no tags", "a cat, no tags", []),
    ("", "", []),
    ("a cat <lora:cute:0.8>", "a cat ", [ExtraNetwork("lora", "cute", ("0.8",))]),
    ("<lora:cute:0.8>, a cat", ", a cat", [ExtraNetwork("lora", "cute", ("0.8",))]),
    ("a <lora:x> b", "a  b", [ExtraNetwork("lora", "x", ())]),
    ("a <lora:x:0.8:0.5> b", "a  b", [ExtraNetwork("lora", "x", ("0.8", "0.5"))]),
    (
        "a <lora:x:0.8:0.5:lbw=OUTD> b",
        "a  b",
        [ExtraNetwork("lora", "x", ("0.8", "0.5", "lbw=OUTD"))],
    ),
    ("<hypernet:anime:1>", "", [ExtraNetwork("hypernet", "anime", ("1",))]),
    (
        "photo, <lyco:film grain:0.6>, <lora:detail_tweaker:-0.5>, sharp",
        "photo, , , sharp",
        [
            ExtraNetwork("lyco", "film grain", ("0.6",)),
            ExtraNetwork("lora", "detail_tweaker", ("-0.5",)),
        ],
    ),
    (
        "<lora:a:1><lora:b:2><hypernet:c:0.3>x",
        "x",
        [
            ExtraNetwork("lora", "a", ("1",)),
            ExtraNetwork("lora", "b", ("2",)),
            ExtraNetwork("hypernet", "c", ("0.3",)),
        ],
    ),
    ("a <mystery:thing:7> b", "a  b", [ExtraNetwork("mystery", "thing", ("7",))]),
    ("(a <lora:x:1>:1.2)", "(a :1.2)", [ExtraNetwork("lora", "x", ("1",))]),
    ("a <lora:x:te=0.5:unet=1>", "a ", [ExtraNetwork("lora", "x", ("te=0.5", "unet=1"))]),
    ("<lora::0.5>", "", [ExtraNetwork("lora", "", ("0.5",))]),
    ("<lora:sub/dir/name.v2:1>", "", [ExtraNetwork("lora", "sub/dir/name.v2", ("1",))]),
    ("<лора:кот:1>", "", [ExtraNetwork("лора", "кот", ("1",))]),
    ("a <lora:x>b> c", "a b> c", [ExtraNetwork("lora", "x", ())]),
    # not tags: left as text
    ("a <lora:> b", "a <lora:> b", []),
    ("a <lora> b", "a <lora> b", []),
    ("a <lora:x b", "a <lora:x b", []),
    ("a < lora:x> b", "a < lora:x> b", []),
    ("a <lo-ra:x> b", "a <lo-ra:x> b", []),
    ("1 < 2 > 0", "1 < 2 > 0", []),
]


@pytest.mark.parametrize(
    ("prompt", "text", "networks"), EXTRA_NETWORKS, ids=[repr(p) for p, _, _ in EXTRA_NETWORKS]
)
def test_extract_extra_networks(prompt: str, text: str, networks: list[ExtraNetwork]) -> None:
    assert extract_extra_networks(prompt) == (text, networks)


def test_extra_networks_then_attention() -> None:
    text, networks = extract_extra_networks("a (red:1.2) cat <lora:cute:0.8> BREAK dog")
    assert networks == [ExtraNetwork("lora", "cute", ("0.8",))]
    assert parse_prompt(text) == [seg("a "), seg("red", 1.2), seg(" cat"), BREAK, seg("dog")]


def test_module_does_not_import_torch() -> None:
    code = (
        "import sys; import sd_core.prompt_parser; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
