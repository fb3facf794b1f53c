"""Builds an NLTK data folder with WordNet 3.0 from the Debian packages, for METEOR, offline.

NLTK's WordNet reader wants `corpora/wordnet/` holding the WordNet 3.0 database files plus a
`lexnames` file. Debian's wordnet-base and wordnet-sense-index packages ship the database in
/usr/share/wordnet but not `lexnames` (its content is compiled into the WordNet C library), so we
write it from the WordNet 3.0 specification (lexnames(5WN)) and check it against the data files.

    python -m costeer_jax.eval.wordnet_setup [--target DIR]      # default: <repo>/.nltk_data
"""
from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
from pathlib import Path

DEBIAN_WORDNET_DIR = Path("/usr/share/wordnet")
DEBIAN_PACKAGES = ("wordnet-base", "wordnet-sense-index")
DEFAULT_TARGET = Path(__file__).resolve().parents[2] / ".nltk_data"

# Every file NLTK's WordNetCorpusReader opens, except lexnames, which we generate.
WORDNET_DATABASE_FILES = (
    "cntlist.rev", "index.sense",
    "index.adj", "index.adv", "index.noun", "index.verb",
    "data.adj", "data.adv", "data.noun", "data.verb",
    "adj.exc", "adv.exc", "noun.exc", "verb.exc",
)

# WordNet 3.0 lexicographer files, in file-number order, with their syntactic category
# (1 noun, 2 verb, 3 adjective, 4 adverb) as in lexnames(5WN).
_LEXICOGRAPHER_FILES = (
    ("adj.all", 3), ("adj.pert", 3), ("adv.all", 4), ("noun.Tops", 1), ("noun.act", 1),
    ("noun.animal", 1), ("noun.artifact", 1), ("noun.attribute", 1), ("noun.body", 1),
    ("noun.cognition", 1), ("noun.communication", 1), ("noun.event", 1), ("noun.feeling", 1),
    ("noun.food", 1), ("noun.group", 1), ("noun.location", 1), ("noun.motive", 1), ("noun.object", 1),
    ("noun.person", 1), ("noun.phenomenon", 1), ("noun.plant", 1), ("noun.possession", 1),
    ("noun.process", 1), ("noun.quantity", 1), ("noun.relation", 1), ("noun.shape", 1),
    ("noun.state", 1), ("noun.substance", 1), ("noun.time", 1), ("verb.body", 2), ("verb.change", 2),
    ("verb.cognition", 2), ("verb.communication", 2), ("verb.competition", 2), ("verb.consumption", 2),
    ("verb.contact", 2), ("verb.creation", 2), ("verb.emotion", 2), ("verb.motion", 2),
    ("verb.perception", 2), ("verb.possession", 2), ("verb.social", 2), ("verb.stative", 2),
    ("verb.weather", 2), ("adj.ppl", 3),
)
_CATEGORY_OF_SYNSET_TYPE = {"n": 1, "v": 2, "a": 3, "s": 3, "r": 4}


class WordNetMissingError(RuntimeError):
    pass


def install_hint() -> str:
    return (f"install the Debian packages ({' '.join(DEBIAN_PACKAGES)}: `apt-get install -y "
            f"--no-install-recommends {' '.join(DEBIAN_PACKAGES)}`) and run `make venv` or "
            f"`python -m costeer_jax.eval.wordnet_setup`")


def lexnames_text() -> str:
    return "".join(f"{number:02d}\t{name}\t{category}\n"
                   for number, (name, category) in enumerate(_LEXICOGRAPHER_FILES))


def check_lexnames_against_data(source: Path) -> None:
    """Every synset's lexicographer file number must exist and match the synset's category."""
    for part_of_speech in ("adj", "adv", "noun", "verb"):
        with (source / f"data.{part_of_speech}").open("r", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("  "):  # license header lines
                    continue
                fields = line.split(" ", 3)
                lexicographer_file, synset_type = int(fields[1]), fields[2]
                if (lexicographer_file >= len(_LEXICOGRAPHER_FILES)
                        or _LEXICOGRAPHER_FILES[lexicographer_file][1] != _CATEGORY_OF_SYNSET_TYPE[synset_type]):
                    raise WordNetMissingError(
                        f"{source}/data.{part_of_speech}: synset {fields[0]} names lexicographer file "
                        f"{lexicographer_file} ({synset_type}) that the WordNet 3.0 lexnames table "
                        "does not match; is this WordNet 3.0?")


def wordnet_dir(nltk_data_dir: Path) -> Path:
    return Path(nltk_data_dir) / "corpora" / "wordnet"


def is_wordnet_installed(nltk_data_dir: Path) -> bool:
    directory = wordnet_dir(nltk_data_dir)
    return all((directory / name).is_file() for name in (*WORDNET_DATABASE_FILES, "lexnames"))


def build_nltk_wordnet(target: Path = DEFAULT_TARGET, source: Path = DEBIAN_WORDNET_DIR) -> Path:
    """Populates target/corpora/wordnet from `source`; idempotent. Returns the nltk_data folder."""
    missing = [name for name in WORDNET_DATABASE_FILES if not (Path(source) / name).is_file()]
    if missing:
        raise WordNetMissingError(f"WordNet files {', '.join(missing)} not found in {source}: {install_hint()}")
    check_lexnames_against_data(Path(source))
    destination = wordnet_dir(target)
    destination.mkdir(parents=True, exist_ok=True)
    for name in WORDNET_DATABASE_FILES:
        # Copies, not links: the folder must survive being shipped to another machine.
        if not (destination / name).is_file() or not filecmp.cmp(source / name, destination / name, shallow=True):
            shutil.copy2(source / name, destination / name)
    lexnames = destination / "lexnames"
    if not lexnames.is_file() or lexnames.read_text() != lexnames_text():
        lexnames.write_text(lexnames_text())
    return Path(target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=Path, default=DEFAULT_TARGET, help="nltk_data folder to populate")
    parser.add_argument("--source", type=Path, default=DEBIAN_WORDNET_DIR, help="WordNet 3.0 database folder")
    args = parser.parse_args(argv)
    try:
        target = build_nltk_wordnet(args.target, args.source)
    except WordNetMissingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"WordNet 3.0 ready in {wordnet_dir(target)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
