"""IMDb's published layout: one UTF-8 document per file, <br /> tags and C1 characters handled, labels and ratings
from the layout, a fixed validation carve; on a fixture written in the real format and on the real sample."""

import pytest

from deepfuse.data import DataError
from deepfuse.data.imdb import EmptyReviewsSkipped, carve_validation, find_root, load_split, read_review
from deepfuse.data.text import PREFIX_CHARACTERS_PER_TOKEN, Vocabulary

POSITIVE = [
    "A wonderful film.<br /><br />Great acting and a great story",
    "Loved it\u0085 truly great, a gem",
    "Brilliant, moving and great fun",
    "The best film of the year, great cast",
]
NEGATIVE = [
    "A dull, awful film.<br />Bad acting",
    "Terrible plot \u0096 boring and bad",
    "Awful. Just awful and dull",
    "The worst film of the year, bad cast",
]


def write_imdb(root, positive=POSITIVE, negative=NEGATIVE, test_positive=None, test_negative=None):
    """aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt as published: no newline at the end, UTF-8, ids not
    contiguous; plus what a loader must ignore (unsup/, imdb.vocab, urls, .DS_Store)."""
    base = root / "aclImdb"
    texts = {
        ("train", "pos"): positive,
        ("train", "neg"): negative,
        ("test", "pos"): test_positive or positive[::-1],
        ("test", "neg"): test_negative or negative[::-1],
    }
    for (split, label), reviews in texts.items():
        folder = base / split / label
        folder.mkdir(parents=True)
        for i, text in enumerate(reviews):
            rating = 10 - i % 3 if label == "pos" else 1 + i % 4
            (folder / f"{3 * i + 1}_{rating}.txt").write_bytes(text.encode("utf-8"))
        (folder / ".DS_Store").write_bytes(b"\x00\x01binary")
    (base / "train" / "unsup").mkdir()
    (base / "train" / "unsup" / "0_0.txt").write_text("unlabelled review, never read")
    (base / "train" / "urls_pos.txt").write_text("http://www.imdb.com/title/tt0453418/usercomments\n")
    (base / "imdb.vocab").write_text("the\nand\n")
    return base


def test_reviews_read_as_one_document_with_labels_and_ratings(tmp_path):
    root = write_imdb(tmp_path)
    reviews = load_split(root, "train")
    assert [r.label for r in reviews] == [0] * 4 + [1] * 4  # negatives first, unsup/ ignored
    assert [r.rating for r in reviews] == [1, 2, 3, 4, 10, 9, 8, 10]
    assert [r.path.name for r in reviews[:2]] == ["1_1.txt", "4_2.txt"]
    loved = reviews[5].text
    assert loved == "Loved it\u2026 truly great, a gem"  # U+0085 is cp1252's ellipsis; still one document
    assert len(loved.splitlines()) == 1
    assert reviews[4].text == "A wonderful film.  Great acting and a great story"
    assert "\u2013" in reviews[1].text and "\u0096" not in reviews[1].text


def test_read_review_keeps_every_line_and_strips_only_br_tags(tmp_path):
    path = tmp_path / "5_8.txt"
    path.write_bytes("first\u0085second<BR/>third <br /><br>fourth <i>kept</i>".encode())
    text = read_review(path)
    assert text == "first\u2026second third   fourth <i>kept</i>"


def test_root_is_the_aclimdb_folder_or_its_parent(tmp_path):
    base = write_imdb(tmp_path)
    assert find_root(tmp_path) == base == find_root(base)
    with pytest.raises(DataError, match="no such folder"):
        find_root(tmp_path / "missing")
    with pytest.raises(DataError, match="not IMDb's layout"):
        find_root(base / "train" / "pos")


def test_errors_name_the_file(tmp_path):
    base = write_imdb(tmp_path)
    bad_name = base / "train" / "pos" / "review7.txt"
    bad_name.write_text("great")
    with pytest.raises(DataError, match=r"review7\.txt: file name is not <id>_<rating>\.txt"):
        load_split(base, "train")
    bad_name.unlink()
    latin1 = base / "train" / "neg" / "99_2.txt"
    latin1.write_bytes("caf\xe9 awful".encode("latin-1"))
    with pytest.raises(DataError, match=r"99_2\.txt: not UTF-8 text \(byte 0xe9 at offset 3\)"):
        load_split(base, "train")
    latin1.unlink()
    for path in (base / "test" / "pos").iterdir():
        path.unlink()
    (base / "test" / "pos").rmdir()
    with pytest.raises(DataError, match=r"test/pos: missing"):
        load_split(base, "test")


def test_validation_carve_is_seeded_disjoint_and_complete(tmp_path):
    reviews = load_split(write_imdb(tmp_path), "train")
    train, val = carve_validation(reviews, fraction=0.25)
    again = carve_validation(reviews, fraction=0.25)
    assert [r.path for r in val] == [r.path for r in again[1]] and len(val) == 2
    assert sorted(r.path for r in train + val) == sorted(r.path for r in reviews)
    assert carve_validation(reviews, 0.25, seed=1)[1] != val


def test_reads_the_real_sample(realdata):
    root = find_root(realdata / "imdb")
    train, test = load_split(root, "train"), load_split(root, "test")
    assert (len(train), len(test)) == (200, 200)
    for review in train + test:
        assert (review.rating >= 7) == (review.label == 1) and review.rating not in (5, 6)
        assert "<br" not in review.text.lower()
        assert not any("\x80" <= ch <= "\x9f" for ch in review.text)  # C1 mojibake mapped back
    # test/neg/53_4.txt holds C1 characters (cp1252 mojibake); it stays one document
    raw = (root / "test" / "neg" / "53_4.txt").read_bytes().decode("utf-8")
    assert any("\x80" <= ch <= "\x9f" for ch in raw)
    cleaned = next(r.text for r in test if r.path.name == "53_4.txt")
    assert len(cleaned) == len(raw)  # one character per C1 character; nothing dropped
    nel = root / "train" / "neg" / "98_1.txt"  # holds U+0085, which str.splitlines() treats as a line break
    assert len(nel.read_bytes().decode().splitlines()) > 1
    assert "movie\u2026." in read_review(nel)


def test_empty_reviews_are_skipped_and_counted_in_one_warning(tmp_path):
    base = write_imdb(tmp_path)
    (base / "train" / "pos" / "40_9.txt").write_bytes(b"  \n\t ")
    (base / "train" / "neg" / "41_2.txt").write_bytes(b"<br /><br />")  # nothing left once the tags go
    with pytest.warns(EmptyReviewsSkipped, match=r"train: skipped 2 empty reviews \(only white space; first: .*41_2"):
        reviews = load_split(base, "train")
    assert len(reviews) == 8 and all(r.text.strip() for r in reviews)


def test_reading_shows_progress_when_asked(tmp_path, capsys):
    base = write_imdb(tmp_path)
    load_split(base, "test", progress=True)
    assert "reading test reviews" in capsys.readouterr().err
    load_split(base, "test")
    assert capsys.readouterr().err == ""


def test_encoding_a_prefix_gives_the_whole_texts_first_tokens(realdata):
    """Encoding cuts long texts to max_len * PREFIX_CHARACTERS_PER_TOKEN characters first: the kept ids are those
    of the whole text, on the real reviews and on texts built so the cut splits a word, a combining accent and a run
    of punctuation, or leaves too few tokens."""
    texts = [r.text for r in load_split(find_root(realdata / "imdb"), "train")]
    vocabulary = Vocabulary.fit(texts, 5000)
    max_len = 12
    limit = max_len * PREFIX_CHARACTERS_PER_TOKEN
    word = "Cafe\u0301s"  # an accent that NFKC composes with the letter before it
    crafted = [
        ("ab " * 40)[: limit - 1] + word * 3,
        "x" * (limit + 50) + " tail",
        "!?" * limit,
        ". " * (limit // 2 - 1) + "e\u0301" + " great" * 20,
    ]
    for max_len in (3, 12, 100):
        whole = [e.ids[:max_len] or [vocabulary.unk_id] for e in vocabulary.tokenizer.encode_batch(texts + crafted)]
        assert vocabulary.encode(texts + crafted, max_len) == whole
    assert sum(len(t) > limit for t in texts) > 150  # the cut is exercised on most real reviews
