"""Our text tower and tokenizer against open_clip's own (the oracle): same names, same initial
weights for a seed, same outputs, same token ids."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from detailclip_cli.core.config import TextConfig
from detailclip_cli.core.model.text import TextTransformer
from detailclip_cli.core.model import tokenizer
from detailclip_cli.core.model.tokenizer import ClipTokenizer, clip_tokenizer

open_clip = pytest.importorskip("open_clip")
from open_clip.tokenizer import SimpleTokenizer  # noqa: E402
from open_clip.transformer import QuickGELU as OpenClipQuickGELU  # noqa: E402
from open_clip.transformer import TextTransformer as OpenClipText  # noqa: E402

CFG = TextConfig(context_length=16, vocab_size=300, width=32, heads=4, layers=2, act="gelu")


def open_clip_twin(cfg: TextConfig, embed_dim: int) -> torch.nn.Module:
    act = OpenClipQuickGELU if cfg.act == "quick_gelu" else torch.nn.GELU
    return OpenClipText(context_length=cfg.context_length, vocab_size=cfg.vocab_size, width=cfg.width,
                        heads=cfg.heads, layers=cfg.layers, output_dim=embed_dim, act_layer=act)


def _ids(n: int, cfg: TextConfig, seed: int = 0) -> torch.Tensor:
    """(n, T) ids ending in an end token (the row's highest id) at varied positions, zero-padded."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(n, cfg.context_length, dtype=torch.long)
    for row in range(n):
        length = int(torch.randint(2, cfg.context_length + 1, (1,), generator=g))
        ids[row, :length] = torch.randint(1, cfg.vocab_size - 1, (length,), generator=g)
        ids[row, length - 1] = cfg.vocab_size - 1
    return ids


def test_same_seed_same_parameters_as_open_clip():
    torch.manual_seed(3)
    theirs = open_clip_twin(CFG, 24)
    after_theirs = torch.rand(())  # the generator's state after the build
    torch.manual_seed(3)
    ours = TextTransformer(CFG, output_dim=24)
    assert torch.rand(()) == after_theirs  # the same random numbers were drawn
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert a[key].shape == b[key].shape and torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("act", ["gelu", "quick_gelu"])
def test_outputs_equal_open_clip(act):
    cfg = TextConfig(**{**CFG.__dict__, "act": act})
    theirs = open_clip_twin(cfg, 24).eval()
    ours = TextTransformer(cfg, output_dim=24).eval()
    ours.load_state_dict(theirs.state_dict())
    ids = _ids(6, cfg)
    with torch.no_grad():
        assert torch.allclose(ours(ids), theirs(ids), atol=1e-5, rtol=1e-5)
    # and with gradients on (nn.MultiheadAttention's training path differs from its eval path)
    ours.train(), theirs.train()
    assert torch.allclose(ours(ids), theirs(ids), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_shipped_weights_load_unchanged_and_encode_like_open_clip():
    from detailclip_cli.core.store.lookup import resolve_model

    model = resolve_model(None, device="cpu")
    cfg, state = model.cfg, model.text.state_dict()
    theirs = open_clip_twin(cfg.text, cfg.embed_dim).eval()
    assert {k: v.shape for k, v in theirs.state_dict().items()} == {k: v.shape for k, v in state.items()}
    theirs.load_state_dict(state)
    texts = ["a photo of a striped square", "", "x " * 200, "ünïcödé 漢字 🙂 & &amp; it's"]
    ids = model.tokenize(texts)
    assert torch.equal(ids, SimpleTokenizer(context_length=cfg.text.context_length)(texts))
    with torch.no_grad():
        assert torch.allclose(model.text(ids), theirs(ids), atol=1e-5, rtol=1e-4)


TEXTS = [
    "",
    "a photo of a cat.",
    "  A  Photo\tOF\nthe   DOG!!  ",
    "it's what we've done; they'll see, I'd say, you're sure",
    "Café naïve façade coöperate — “quotes” and ‘single’",
    "日本語のテキスト 中文 한국어 العربية ελληνικά кириллица",
    "emoji 🙂🚀👍🏽 and symbols ©®™ ∑∫√ ½",
    "html &amp; entities &lt;b&gt; &amp;amp; &#39;x&#39;",
    "mojibake fix: Ã©tÃ© and numbers 12345 3.14159 1,000,000",
    "<start_of_text> literal special tokens <end_of_text>",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "a " * 100,  # far beyond the context: cut, end token kept last
    "word " * 74 + "end",  # exactly at the boundary
]


@pytest.mark.parametrize("context", [77, 16])
def test_tokenizer_equals_open_clip(context):
    ours, theirs = ClipTokenizer(context), SimpleTokenizer(context_length=context)
    got, want = ours(TEXTS), theirs(TEXTS)
    assert got.dtype == want.dtype and torch.equal(got, want)
    assert ours.vocab_size == theirs.vocab_size == 49408
    assert torch.equal(ours("one string"), theirs("one string"))


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=sorted(tokenizer._FTFY_IDENTITY), max_size=200))
def test_ftfy_leaves_plain_ascii_alone(text):
    # The tokenizer skips ftfy (and its import) for these characters: that must change nothing.
    import ftfy

    assert ftfy.fix_text(text) == text and tokenizer.fix_text(text) == text


@pytest.mark.parametrize("text", TEXTS + ["a & b", "bell\x07", "cr\r\nlf", "del\x7f", "esc \x1b[31mred"])
def test_fix_text_is_ftfy(text):
    import ftfy

    assert tokenizer.fix_text(text) == ftfy.fix_text(text)


def test_tokenizer_cuts_long_text_keeping_the_end_token():
    ids = clip_tokenizer(8)(["a " * 50, ""])
    assert ids.shape == (2, 8)
    assert ids[0, 0] == 49406 and ids[0, -1] == 49407 and (ids[0] != 0).all()
    assert ids[1].tolist() == [49406, 49407, 0, 0, 0, 0, 0, 0]
