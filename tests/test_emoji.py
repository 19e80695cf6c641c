"""The emoji dataset: emoji-test.txt parsing, the builder on a font-free fixture, its cache, the missing-package
line, and (when Debian's packages are installed) a few real emoji drawn in colour on white."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from trainer import data as data_mod
from trainer import emoji as emoji_mod

FIXTURE = """\
# emoji-test.txt (a tiny fixture)
# group: Smileys & Emotion

# subgroup: face-smiling
1F600                                                  ; fully-qualified     # 😀 E1.0 grinning face
263A FE0F                                              ; fully-qualified     # ☺️ E0.6 smiling face
263A                                                   ; unqualified         # ☺ E0.6 smiling face

# group: People & Body
1F468 200D 1F469 200D 1F467                            ; fully-qualified     # 👨‍👩‍👧 E2.0 family: man, woman, girl
1F44B 1F3FB                                            ; fully-qualified     # 👋🏻 E1.0 waving hand: light skin tone
1F441 200D 1F5E8                                       ; minimally-qualified # 👁‍🗨 E2.0 eye in speech bubble

# group: Component
1F3FB                                                  ; component           # 🏻 E1.0 light skin tone

# group: Animals & Nature
1F415                                                  ; fully-qualified     # 🐕 E0.7 dog
1F408                                                  ; fully-qualified     # 🐈 E0.7 cat

#EOF
"""
# One colour per fixture emoji: the fake renderer draws a square of it (no font needed).
COLOURS = {"\U0001F600": (250, 200, 0), "\u263a\ufe0f": (240, 120, 0), "\U0001F415": (140, 80, 20), "\U0001F408": (90, 90, 90)}


def square_renderer(calls: list[str] | None = None) -> emoji_mod.RenderFn:
    """Draws a coloured square with a transparent margin; the family sequence as two squares side by side
    (a font's fallback, to be skipped); anything else as one red square."""

    def render(sequence: str) -> Image.Image:
        if calls is not None:
            calls.append(sequence)
        width = 40 if "\u200d" in sequence else 20
        image = Image.new("RGBA", (width, 20), (0, 0, 0, 0))
        colour = COLOURS.get(sequence, (220, 30, 30))
        image.paste((*colour, 255), (4, 4, 16, 16))
        if width > 20:
            image.paste((*colour, 255), (24, 4, 36, 16))
        return image

    return render


@pytest.fixture
def packages(tmp_path):
    """A fake font file (never read as a font: the tests inject a renderer) and the fixture emoji-test.txt."""
    font, test = tmp_path / "pkg" / "font.ttf", tmp_path / "pkg" / "emoji-test.txt"
    font.parent.mkdir()
    font.write_bytes(b"not a font")
    test.write_text(FIXTURE, encoding="utf-8")
    return font, test


def test_parse_keeps_fully_qualified_entries_with_their_groups():
    entries = emoji_mod.parse_emoji_test(FIXTURE)
    assert [e.sequence for e in entries] == [
        "\U0001F600", "\u263a\ufe0f", "\U0001F468\u200d\U0001F469\u200d\U0001F467", "\U0001F44B\U0001F3FB", "\U0001F415", "\U0001F408",
    ]  # unqualified, minimally-qualified and component entries left out; multi-code-point sequences whole
    assert [e.group for e in entries] == ["Smileys & Emotion"] * 2 + ["People & Body"] * 2 + ["Animals & Nature"] * 2
    assert entries[0].name == "grinning face" and entries[2].name == "family: man, woman, girl" and entries[4].name == "dog"
    assert emoji_mod.emoji_groups(entries) == ["Smileys & Emotion", "People & Body", "Animals & Nature"]  # Component has none


def test_parse_ignores_malformed_lines():
    text = (
        "# group: G\nZZZZ ; fully-qualified # ? E1.0 bad\n110000 ; fully-qualified # ? E1.0 too big\n"
        "; fully-qualified # empty\n1F600 ; fully-qualified # 😀 E1.0 ok\n"
    )
    assert [e.sequence for e in emoji_mod.parse_emoji_test(text)] == ["\U0001F600"]
    assert emoji_mod.parse_emoji_test("1F600 ; fully-qualified # before any group\n") == []


def test_builder_draws_squares_on_white_and_skips_fallbacks():
    entries = emoji_mod.parse_emoji_test(FIXTURE)
    built = emoji_mod.build_emoji(entries, square_renderer(), image_size=10)
    assert built.images.shape == (5, 3, 10, 10) and built.images.dtype == np.uint8  # the family (two glyphs) skipped
    assert built.names == ["grinning face", "smiling face", "waving hand: light skin tone", "dog", "cat"]
    assert built.class_names == ["Smileys & Emotion", "People & Body", "Animals & Nature"]
    assert built.labels.tolist() == [0, 0, 1, 2, 2]
    corner, centre = built.images[:, :, 0, 0], built.images[:, :, 5, 5]  # (N, 3)
    assert (corner == 255).all()  # the transparent margin is white
    assert np.abs(centre[[0, 3]].astype(int) - [[250, 200, 0], [140, 80, 20]]).max() <= 8  # each its own colour (resampling's ringing aside)


def test_builder_refuses_a_font_that_draws_nothing():
    blank = lambda sequence: Image.new("RGBA", (20, 20), (0, 0, 0, 0))  # noqa: E731
    with pytest.raises(emoji_mod.EmojiError, match="drew none"):
        emoji_mod.build_emoji(emoji_mod.parse_emoji_test(FIXTURE), blank, image_size=8)


def test_cache_written_and_reused(tmp_path, packages):
    font, test = packages
    calls: list[str] = []
    first = emoji_mod.load_emoji(tmp_path / "data", 12, font_path=font, test_path=test, render=square_renderer(calls))
    assert len(calls) == 6 and first.cache_file is not None and first.cache_file.parent == tmp_path / "data" / emoji_mod.CACHE_SUBDIR
    assert first.source["name"] == "emoji" and first.source["kind"] == "full" and "5 colour emoji in 3 Unicode groups" in first.source["note"]
    second = emoji_mod.load_emoji(tmp_path / "data", 12, font_path=font, test_path=test, render=square_renderer(calls))
    assert len(calls) == 6, "the cache was not reused"
    assert second.source == first.source  # the provenance does not depend on whether the cache was there
    assert np.array_equal(first.images, second.images) and np.array_equal(first.labels, second.labels)
    assert (first.class_names, first.names, first.sequences) == (second.class_names, second.names, second.sequences)
    # another size is another cache; a changed emoji-test.txt makes the old one stale (rendered again, replaced)
    emoji_mod.load_emoji(tmp_path / "data", 8, font_path=font, test_path=test, render=square_renderer(calls))
    assert len(calls) == 12
    test.write_text(FIXTURE.replace("1F408 ", "1F431 "), encoding="utf-8")
    third = emoji_mod.load_emoji(tmp_path / "data", 12, font_path=font, test_path=test, render=square_renderer(calls))
    assert len(calls) == 18 and third.sequences[-1] == "\U0001F431"
    assert sorted(p.name.split("-")[1] for p in third.cache_file.parent.glob("*.npz")) == ["12px", "8px"]  # the stale one removed


def test_a_damaged_cache_is_rebuilt(tmp_path, packages):
    font, test = packages
    calls: list[str] = []
    built = emoji_mod.load_emoji(tmp_path, 8, font_path=font, test_path=test, render=square_renderer(calls))
    built.cache_file.write_bytes(built.cache_file.read_bytes()[:100])  # truncated
    again = emoji_mod.load_emoji(tmp_path, 8, font_path=font, test_path=test, render=square_renderer(calls))
    assert len(calls) == 12 and np.array_equal(again.images, built.images)


def test_split_is_fixed_disjoint_and_complete():
    train, test = emoji_mod.split_indices(100)
    assert len(test) == 10 and sorted([*train, *test]) == list(range(100))
    assert np.array_equal(test, emoji_mod.split_indices(100)[1])
    one_train, one_test = emoji_mod.split_indices(1)
    assert one_train.tolist() == one_test.tolist() == [0]


def test_missing_packages_one_line(tmp_path, monkeypatch, packages):
    font, test = packages
    monkeypatch.setattr(emoji_mod, "EMOJI_FONT_PATH", tmp_path / "no-font.ttf")
    monkeypatch.setattr(emoji_mod, "EMOJI_TEST_PATH", test)
    problem = data_mod.dataset_problem("emoji")
    assert problem is not None and "\n" not in problem
    assert "fonts-noto-color-emoji" in problem and "unicode-data" in problem and "apt-get install fonts-noto-color-emoji unicode-data" in problem
    assert "no-font.ttf" in problem and str(test) not in problem  # names what is missing, only that
    with pytest.raises(data_mod.DataError) as e:
        data_mod.load_dataset("emoji", tmp_path / "data")
    assert str(e.value) == problem
    monkeypatch.setattr(emoji_mod, "EMOJI_FONT_PATH", font)
    assert data_mod.dataset_problem("emoji") is None


def test_load_dataset_emoji_splits_and_converts(tmp_path, monkeypatch, packages):
    font, test = packages
    monkeypatch.setattr(emoji_mod, "EMOJI_FONT_PATH", font)
    monkeypatch.setattr(emoji_mod, "EMOJI_TEST_PATH", test)
    monkeypatch.setattr(emoji_mod, "font_renderer", lambda path: square_renderer())
    assert "emoji" in data_mod.DATASETS
    assert (data_mod.default_image_size("emoji"), data_mod.default_channels("emoji")) == (64, 3)
    data = data_mod.load_dataset("emoji", tmp_path / "data")
    assert data.image_shape == (3, 64, 64) and len(data.train_x) + len(data.test_x) == 5 and len(data.test_x) == 1
    assert data.class_names == ["Smileys & Emotion", "People & Body", "Animals & Nature"] and data.source["name"] == "emoji"
    gray = data_mod.load_dataset("emoji", tmp_path / "data", image_size=16, channels=1)
    assert gray.image_shape == (1, 16, 16) and gray.test_y.tolist() == data.test_y.tolist()  # the same fixed split


REAL = [emoji_mod.EmojiEntry(s, n, g) for s, n, g in [
    ("\U0001F415", "dog", "Animals & Nature"), ("\U0001F697", "automobile", "Travel & Places"),
    ("\U0001F600", "grinning face", "Smileys & Emotion"), ("\U0001F1FA\U0001F1F8", "flag: United States", "Flags"),
    ("\U0001F415\u200d\U0001F9BA", "service dog", "Animals & Nature"),  # a ZWJ sequence (Noto draws families gray)
]]


@pytest.mark.skipif(
    emoji_mod.emoji_problem() is not None, reason=f"Debian's {' and '.join(emoji_mod.EMOJI_PACKAGES)} not installed"
)
def test_real_font_draws_colour_emoji_on_white():
    entries = emoji_mod.parse_emoji_test(emoji_mod.EMOJI_TEST_PATH.read_text(encoding="utf-8"))
    assert len(entries) > 1000 and {"Smileys & Emotion", "Animals & Nature", "Flags"} <= set(emoji_mod.emoji_groups(entries))
    built = emoji_mod.build_emoji(REAL, emoji_mod.font_renderer(emoji_mod.EMOJI_FONT_PATH), image_size=32)
    assert built.images.shape == (5, 3, 32, 32)  # all five drawn as one glyph each (the ZWJ sequence and the flag included)
    x = built.images.astype(np.int16)  # (N, 3, S, S)
    assert (x[:, :, 0, 0] == 255).all()  # the corners are white
    saturation = x.max(1) - x.min(1)  # (N, S, S): 0 for gray pixels
    assert ((saturation > 60).mean(axis=(1, 2)) > 0.05).all(), "an emoji came out gray"
    assert ((x.min(1) < 200).mean(axis=(1, 2)) > 0.1).all(), "an emoji is (almost) blank"
