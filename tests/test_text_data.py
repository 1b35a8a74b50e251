"""Text data sets: STS-B, sentiment tweets and Austen's novels, read from what `make setup` installs."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from effdl.core.errors import DataError
from effdl.data import TEXT_DATASETS, Corpus, LabelledText, SentencePairs, TextData, load_text
from effdl.data.text import SENTIMENT_LABELS, SENTIMENT_SIZES, _sentiment_rows, austen_cache_file


# ---------------------------------------------------------------------------------------- STS-B

def test_stsb_counts_and_scores():
    d = load_text("stsb")
    assert isinstance(d, TextData) and d.kind == "pairs" and d.preprocessing
    assert [len(d.split(s)) for s in ("train", "val", "test")] == [5749, 1500, 1379]
    for s in ("train", "val", "test"):
        p = d.split(s)
        assert isinstance(p, SentencePairs) and p.scores.dtype == np.float32
        assert p.scores.min() == 0.0 and p.scores.max() == 5.0
        assert all(isinstance(x, str) and x for x in p.sentences_a + p.sentences_b)


def test_stsb_rows_match_the_files():
    # First and last lines of each file, copied by hand from `head -1` / `tail -1` of the CSVs;
    # the last lines have 9 columns (two source attributions) and an integer score.
    d = load_text("stsb")
    expected = {
        "train": [("A plane is taking off.", "An air plane is taking off.", 5.0),
                  ("Putin spokesman: Doping charges appear unfounded",
                   "The Latest on Severe Weather: 1 Dead in Texas After Tornado", 0.0)],
        "val": [("A man with a hard hat is dancing.", "A man wearing a hard hat is dancing.", 5.0),
                ("New video shows US police officers beating mentally-ill man",
                 "New York police officer critically wounded in hatchet attack", 0.0)],
        "test": [("A girl is styling her hair.", "A girl is brushing her hair.", 2.5),
                 ("South Korea declares end to MERS outbreak",
                  "North Korea Delegation Meets With South Korean Officials", 0.0)],
    }
    for s, (first, last) in expected.items():
        p = d.split(s)
        assert (p.sentences_a[0], p.sentences_b[0], float(p.scores[0])) == first
        assert (p.sentences_a[-1], p.sentences_b[-1], float(p.scores[-1])) == last


def test_records_are_frozen():
    p = load_text("stsb").train
    with pytest.raises(ValueError):
        p.scores[0] = 1.0  # read-only array
    with pytest.raises(AttributeError):
        p.scores = None


# ------------------------------------------------------------------------------------ sentiment

def test_sentiment_splits_are_stratified():
    d = load_text("sentiment", seed=0)
    assert d.kind == "labelled"
    _, pool, _ = _sentiment_rows()
    share = np.bincount(pool, minlength=3) / len(pool)
    for s, size in zip(("train", "val", "test"), SENTIMENT_SIZES):
        p = d.split(s)
        assert isinstance(p, LabelledText) and len(p) == size
        assert p.label_names == SENTIMENT_LABELS == ("negative", "neutral", "positive")
        assert p.labels.dtype == np.int64 and set(np.unique(p.labels)) == {0, 1, 2}
        # each class within one example of its proportional share of the split
        assert np.all(np.abs(np.bincount(p.labels, minlength=3) - share * size) <= 1)


def test_sentiment_is_seeded_and_disjoint():
    a, b, c = load_text("sentiment", seed=0), load_text("sentiment", seed=0), load_text("sentiment", seed=1)
    for s in ("train", "val", "test"):
        assert a.split(s).texts == b.split(s).texts
        assert np.array_equal(a.split(s).labels, b.split(s).labels)
    assert a.train.texts != c.train.texts and c.seed == 1
    sets = [set(a.split(s).texts) for s in ("train", "val", "test")]
    assert len(sets[0]) == 6000 and not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])


def test_sentiment_label_matches_the_file():
    # a tweet from line 2 of the CSV, labelled negative there
    texts, labels, _ = _sentiment_rows()
    i = texts.index("self-driving cars just seem lazy and a waste of money")
    assert SENTIMENT_LABELS[labels[i]] == "negative"
    assert len(texts) == len(set(texts)) and len(texts) == 37197


# --------------------------------------------------------------------------------------- Austen

def test_austen_splits_by_novel(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFDL_CACHE", str(tmp_path))
    d = load_text("austen")
    assert d.kind == "corpus"
    assert d.train.titles == ("Emma", "Sense and Sensibility", "Pride and Prejudice", "Mansfield Park")
    assert d.val.titles == ("Northanger Abbey",) and d.test.titles == ("Persuasion",)
    for s in ("train", "val", "test"):
        c = d.split(s)
        assert isinstance(c, Corpus) and len(c.text) > 400_000
    assert d.train.text.startswith("EMMA") and d.train.document("Emma").startswith("EMMA")
    assert d.train.document("Mansfield Park").startswith("MANSFIELD PARK")
    assert "Anne Elliot" in d.test.text and d.test.text.rstrip().endswith("Finis")
    assert "Anne Elliot" not in d.train.text and "Anne Elliot" not in d.val.text
    # no line of real prose is in two splits
    lines = [{ln for ln in d.split(s).text.split("\n") if len(ln) > 50} for s in ("train", "val", "test")]
    assert not (lines[0] & lines[1] or lines[0] & lines[2] or lines[1] & lines[2])
    with pytest.raises(DataError, match="Persuasion"):
        d.train.document("Persuasion")


def test_austen_cache_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFDL_CACHE", str(tmp_path))
    path = austen_cache_file()
    assert not path.exists()
    first = load_text("austen")
    assert path.is_file() and path.parent == tmp_path / "data"
    # Rewrite the cached Persuasion: the second load must return it, so it read the cache.
    cached = json.loads(path.read_text(encoding="utf-8"))
    cached["novels"]["Persuasion"] = "CACHED PERSUASION"
    path.write_text(json.dumps(cached), encoding="utf-8")
    second = load_text("austen")
    assert second.test.text == "CACHED PERSUASION" and second.train.text == first.train.text
    # A damaged cache is re-parsed from the Debian data, with a warning.
    path.write_text("{not json", encoding="utf-8")
    with pytest.warns(UserWarning, match="re-parsing"):
        third = load_text("austen")
    assert third.test.text == first.test.text


def test_austen_missing_install_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFDL_TEXT_DIR", str(tmp_path))
    with pytest.raises(DataError) as e:
        load_text("austen")
    msg = str(e.value)
    assert "not installed" in msg and "make setup" in msg and "apt-get download r-cran-janeaustenr" in msg
    assert str(tmp_path) in msg


# ------------------------------------------------------------------------------------- catalogue

def test_unknown_name_suggests():
    with pytest.raises(DataError, match="Did you mean 'austen'"):
        load_text("austin")
    assert set(TEXT_DATASETS) == {"stsb", "sentiment", "austen"}


def test_cli_lists_text_sets():
    r = subprocess.run([sys.executable, "-m", "effdl.cli", "data"], capture_output=True, text=True,
                       env={**os.environ, "EFFDL_NO_REEXEC": "1", "COLUMNS": "300"}, timeout=300)
    assert r.returncode == 0, r.stderr
    for name in ("mnist", "stsb", "sentiment", "austen", "Preprocessing"):
        assert name in r.stdout
