"""The word-level vocabulary: fitted on the texts it is given only, deterministic, serialisable; padded batches."""

import pytest
import torch

from deepfuse.data.text import PAD, UNK, TokenDataset, Vocabulary, collate_padded

TRAIN = ["A great film, great acting!", "A dull film\u0085dull plot", "great GREAT great", "the plot was dull"]


def test_fit_keeps_the_most_frequent_tokens_and_the_specials():
    vocabulary = Vocabulary.fit(TRAIN, vocab_size=6)
    vocab = vocabulary.tokenizer.get_vocab()
    assert len(vocabulary) == 6
    assert (vocab[PAD], vocab[UNK]) == (0, 1) == (vocabulary.pad_id, vocabulary.unk_id)
    assert {"great", "dull"} <= set(vocab)  # the two most frequent words (5 and 3 uses), lower-cased
    assert "acting" not in vocab


def test_unicode_white_space_and_punctuation_split_words():
    vocabulary = Vocabulary.fit(TRAIN, vocab_size=100)
    # U+0085 (NEL) separates words like a space; punctuation is its own token
    assert vocabulary.tokens("dull\u0085plot") == ["dull", "plot"]
    assert vocabulary.tokens("Great film, great!") == ["great", "film", ",", "great", "!"]


def test_words_never_seen_in_training_are_unknown():
    vocabulary = Vocabulary.fit(TRAIN, vocab_size=100)
    ids = vocabulary.encode(["great masterpiece"], max_len=10)[0]
    assert ids[1] == vocabulary.unk_id and ids[0] != vocabulary.unk_id
    assert "masterpiece" not in vocabulary.tokenizer.get_vocab()


def test_encode_truncates_and_never_returns_an_empty_sequence():
    vocabulary = Vocabulary.fit(TRAIN, vocab_size=100)
    long, empty, blank = vocabulary.encode(["great " * 50, "", "   "], max_len=7)
    assert len(long) == 7
    assert empty == blank == [vocabulary.unk_id]
    with pytest.raises(ValueError, match="max_len"):
        vocabulary.encode(["x"], max_len=0)


def test_json_round_trip_gives_the_same_ids_and_fitting_is_deterministic():
    vocabulary = Vocabulary.fit(TRAIN, vocab_size=9)
    text = vocabulary.to_json()
    again = Vocabulary.from_json(text)
    probe = ["The great plot was dull, dull, DULL!", "unknown words here"]
    assert again.encode(probe, 50) == vocabulary.encode(probe, 50)
    assert Vocabulary.fit(TRAIN, vocab_size=9).to_json() == text


def test_bad_sizes_and_foreign_tokenizers_are_rejected():
    with pytest.raises(ValueError, match="vocab_size"):
        Vocabulary.fit(TRAIN, vocab_size=2)
    from tokenizers import Tokenizer, models

    with pytest.raises(ValueError, match=r"\[PAD\]"):
        Vocabulary(Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")))


def test_collate_pads_with_the_pad_id_and_keeps_lengths():
    dataset = TokenDataset([[5, 6, 7], [8], [9, 10]], [1, 0, 1])
    assert dataset.lengths == [3, 1, 2]
    (ids, lengths), labels = collate_padded([dataset[i] for i in range(3)], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert lengths.tolist() == [3, 1, 2] and lengths.dtype == torch.int64
    assert labels.tolist() == [1, 0, 1]
    with pytest.raises(ValueError, match="labels"):
        TokenDataset([[1]], [0, 1])
