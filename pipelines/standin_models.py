"""Small random-weight stand-ins for the two CLIP models, for tests and benchmarks without a model hub.

The real models are ``sentence-transformers/clip-ViT-B-32`` (images and texts into one 512-d space) and
``sentence-transformers/clip-ViT-B-32-multilingual-v1`` (texts only, into the same space). The stand-ins are
written in the same on-disk layout as those hub repositories (the same ``modules.json`` module types, the same
``transformers`` architectures, processors and tokenizer classes), so they load through exactly the code path
the real models take: ``SentenceTransformer(folder)``, nothing more. Their weights are random, so vectors are
meaningless for search quality but have the real shapes, dtypes and (for size ``"full"``) the real compute.

Everything is built offline: tokenizers are made with the ``tokenizers`` library from small hand-written
vocabularies, never downloaded.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import sentence_transformers
import torch
import transformers
from sentence_transformers.sentence_transformer.modules import Dense, Pooling
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE, WordPiece
from torch import nn
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizerFast,
    DistilBertConfig,
    DistilBertModel,
    DistilBertTokenizerFast,
)

try:
    # transformers 5 splits image processors by backend; the PIL one needs no torchvision and writes the same
    # preprocessor config ("CLIPImageProcessor"), so loading picks whichever backend is installed.
    from transformers import CLIPImageProcessorPil as _CLIPImageProcessor
except ImportError:  # transformers 4
    from transformers import CLIPImageProcessor as _CLIPImageProcessor

logger = logging.getLogger(__name__)

Size = Literal["tiny", "full"]
_SIZES: tuple[str, ...] = ("tiny", "full")

_EMBEDDING_DIM = 512  # the shared CLIP ViT-B/32 space both real models encode into

# Written last into each model folder: a folder with a matching stamp is complete and can be reused.
_STAMP_FILE = "standin.json"
# Bump when the layout or the architectures change, so stale folders are rebuilt rather than reused.
_FORMAT_VERSION = 1

_IMAGE_SEED = 0
_TEXT_SEED = 1

# The real clip-ViT-B-32 preprocessing: shortest side to 224 (bicubic), centre crop 224, OpenAI CLIP mean/std.
_IMAGE_SIZE = 224
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
_CLIP_MAX_TOKENS = 77
_CLIP_BOS = "<|startoftext|>"
_CLIP_EOS = "<|endoftext|>"
# CLIP's pre-tokenizer pattern (words, single digits, runs of punctuation, English contractions).
_CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

_TEXT_MAX_SEQ_LENGTH = 128  # what the real multilingual model's sentence_bert_config.json sets

_IMAGE_TOWERS: dict[str, dict[str, dict[str, int]]] = {
    "tiny": {
        "vision": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2},
        "text": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2},
    },
    # ViT-B/32: the real compute. Only the text vocabulary is smaller (byte-level, no merges).
    "full": {
        "vision": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
        },
        "text": {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 8},
    },
}

_TEXT_TOWERS: dict[str, dict[str, int]] = {
    "tiny": {"dim": 64, "hidden_dim": 256, "n_layers": 2, "n_heads": 2},
    # distilbert-base-multilingual-cased shapes; only the vocabulary is modest.
    "full": {"dim": 768, "hidden_dim": 3072, "n_layers": 6, "n_heads": 12},
}

# Whole words (several languages) and word pieces for the WordPiece vocabulary, so that common words are one
# or two tokens rather than one token per character; anything else still tokenizes, character by character.
_WORDS = (
    "a an and the of in on with for to is are this that photo picture image black white red blue green "
    "cat dog house car tree sky city street man woman child chat chien maison voiture arbre ciel rue noir "
    "blanc rouge une un le la les des et avec gato perro casa coche negro blanco el los con y hund katze "
    "haus auto baum himmel schwarz weiss rot der die das und mit gatto cane nero bianco il della"
).split()
_SUFFIXES = (
    "s es ed ing er ers est ly ion ions tion ment ments ness able ible al ic ous ive ful less ity "
    "e en em el et ette eur euse eux ique isme iste ée és ées ant ent ons ez ait aient "
    "o os a as ado ada ción ciones mente ita ito "
    "en er ern chen lein ung ungen heit keit lich ig isch "
    "i e ino ina etto etta zione mente"
).split()
_FREQUENT_LETTERS = "etaoinsrhldcu"


def build_image_model(path: str | os.PathLike[str], size: Size = "tiny", dims: int = _EMBEDDING_DIM) -> Path:
    """Write a random-weight stand-in for ``sentence-transformers/clip-ViT-B-32`` and return its folder.

    The layout is the hub repository's: ``modules.json`` with one ``sentence_transformers.models.CLIPModel``
    module in ``0_CLIPModel/``, which holds a ``transformers`` CLIPModel and its CLIPProcessor (a byte-level
    BPE tokenizer and the real image preprocessing). It encodes PIL images and texts, in separate calls, into
    ``dims``-d vectors, CLIP's projection size: 512 as in the real model unless asked (ViT-L/14's is 768).
    ``size="tiny"`` loads and encodes in well under a second; ``size="full"`` has the real ViT-B/32 shapes, for
    benchmarks. An earlier stand-in at ``path`` is replaced; any other non-empty folder there raises
    FileExistsError.
    """
    _check_size(size)
    path = Path(path)
    with _staging(path) as staging:
        module_dir = staging / "0_CLIPModel"
        with _seeded(_IMAGE_SEED):
            model = CLIPModel(_clip_config(size, dims)).eval()
        model.save_pretrained(module_dir)
        _clip_processor().save_pretrained(module_dir)
        _write_json(
            staging / "modules.json",
            [{"idx": 0, "name": "0", "path": "0_CLIPModel", "type": "sentence_transformers.models.CLIPModel"}],
        )
        _write_json(staging / "config_sentence_transformers.json", _st_config())
        _write_stamp(staging, "image", size, dims)
    logger.info("Wrote %s stand-in image model to %s", size, path)
    return path


def build_text_model(path: str | os.PathLike[str], size: Size = "tiny", dims: int = _EMBEDDING_DIM) -> Path:
    """Write a random-weight stand-in for ``clip-ViT-B-32-multilingual-v1`` and return its folder.

    The layout is the hub repository's: a ``transformers`` DistilBERT with a cased WordPiece tokenizer at the
    top level, then ``1_Pooling`` (mean over tokens) and ``2_Dense`` (to ``dims``, 512 unless asked, no bias,
    identity activation), and no normalisation module. It encodes texts only.
    ``size="tiny"`` is a 64-wide, 2-layer model; ``size="full"`` has the real DistilBERT shapes with a small
    vocabulary. An earlier stand-in at ``path`` is replaced; any other non-empty folder there raises
    FileExistsError.
    """
    _check_size(size)
    path = Path(path)
    tower = _TEXT_TOWERS[size]
    with _staging(path) as staging:
        tokenizer = _wordpiece_tokenizer()
        with _seeded(_TEXT_SEED):
            model = DistilBertModel(
                DistilBertConfig(
                    vocab_size=len(tokenizer),
                    max_position_embeddings=512,
                    pad_token_id=tokenizer.pad_token_id,
                    **tower,
                )
            ).eval()
            dense = Dense(tower["dim"], dims, bias=False, activation_function=nn.Identity())
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _write_json(
            staging / "sentence_bert_config.json",
            {"max_seq_length": _TEXT_MAX_SEQ_LENGTH, "do_lower_case": False},
        )
        for name, module in (("1_Pooling", Pooling(tower["dim"], "mean")), ("2_Dense", dense)):
            (staging / name).mkdir()
            module.save(str(staging / name))
        _write_json(
            staging / "modules.json",
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
            ],
        )
        _write_json(staging / "config_sentence_transformers.json", _st_config())
        _write_stamp(staging, "text", size, dims)
    logger.info("Wrote %s stand-in text model to %s", size, path)
    return path


def build_models(directory: str | os.PathLike[str], size: Size = "tiny",
                 dims: int = _EMBEDDING_DIM) -> tuple[Path, Path]:
    """Write both stand-ins, encoding into one ``dims``-d space, as ``directory/image`` and ``directory/text``;
    return ``(image, text)``.

    A folder that is already complete for this ``size`` and ``dims`` (its stamp file matches) is kept, so
    repeated calls are cheap; a stand-in of another size or dims, or of an older format, is rebuilt. Seeds are
    fixed, so a rebuild gives the same weights.
    """
    _check_size(size)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind, build in (("image", build_image_model), ("text", build_text_model)):
        path = directory / kind
        if _is_complete(path, kind, size, dims):
            logger.info("Reusing %s stand-in %s model at %s", size, kind, path)
        else:
            build(path, size, dims)
        paths.append(path)
    return paths[0], paths[1]


def _is_complete(path: str | os.PathLike[str], kind: str, size: str, dims: int) -> bool:
    """Whether ``path`` holds a finished stand-in of this kind ("image" or "text"), size and dims, in this
    format."""
    try:
        stamp = json.loads((Path(path) / _STAMP_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return stamp == _stamp(kind, size, dims)


def _check_size(size: str) -> None:
    if size not in _SIZES:
        raise ValueError(f"size must be one of {', '.join(_SIZES)}, not {size!r}")


@contextmanager
def _staging(path: Path) -> Iterator[Path]:
    """Build in a sibling temporary folder, then swap it in, so ``path`` is never left half-written."""
    # Replacing means deleting: only ever delete an earlier stand-in (it has a stamp), never a user's folder.
    if path.exists() and not (path / _STAMP_FILE).is_file() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"{path} exists and is not a stand-in model folder; refusing to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield staging
        # mkdtemp makes the folder private (0700) and transformers writes its weights 0600; a model folder is
        # meant to be read by other users too (a service account, a container), as a hub download is.
        for folder, _, files in os.walk(staging):
            os.chmod(folder, 0o755)
            for name in files:
                os.chmod(os.path.join(folder, name), 0o644)
        if path.exists():
            shutil.rmtree(path)
        staging.rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch for a deterministic initialisation without disturbing the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _clip_config(size: str, dims: int) -> CLIPConfig:
    towers = _IMAGE_TOWERS[size]
    vocab = _byte_level_vocab()
    text_config = {
        **towers["text"],
        "vocab_size": len(vocab),
        "max_position_embeddings": _CLIP_MAX_TOKENS,
        "bos_token_id": vocab[_CLIP_BOS],
        "eos_token_id": vocab[_CLIP_EOS],
        "pad_token_id": vocab[_CLIP_EOS],
    }
    vision_config = {**towers["vision"], "image_size": _IMAGE_SIZE, "patch_size": 32}
    return CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=dims)


def _byte_level_vocab() -> dict[str, int]:
    """The 256 ByteLevel symbols, each again with CLIP's end-of-word suffix, then the start and end tokens.

    No merges, so every byte is a token. The ``</w>`` copies are there because CLIPTokenizer rebuilds its BPE
    model with ``end_of_word_suffix="</w>"`` at load time: without them the last byte of every word would be
    unknown. This is also how the real CLIP vocabulary begins.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    symbols = alphabet + [symbol + "</w>" for symbol in alphabet] + [_CLIP_BOS, _CLIP_EOS]
    return {symbol: index for index, symbol in enumerate(symbols)}


def _clip_processor() -> CLIPProcessor:
    # The same pipeline CLIPTokenizer builds for itself, so the tokenizer written is the one that is loaded.
    backend = Tokenizer(
        BPE(
            vocab=_byte_level_vocab(),
            merges=[],
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            unk_token=_CLIP_EOS,
            fuse_unk=False,
        )
    )
    backend.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    tokenizer = CLIPTokenizerFast(
        tokenizer_object=backend,
        bos_token=_CLIP_BOS,
        eos_token=_CLIP_EOS,
        unk_token=_CLIP_EOS,
        pad_token=_CLIP_EOS,
        model_max_length=_CLIP_MAX_TOKENS,
    )
    image_processor = _CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": _IMAGE_SIZE},
        resample=3,  # bicubic
        do_center_crop=True,
        crop_size={"height": _IMAGE_SIZE, "width": _IMAGE_SIZE},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=_CLIP_MEAN,
        image_std=_CLIP_STD,
        do_convert_rgb=True,
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def _wordpiece_vocab() -> list[str]:
    """A small cased WordPiece vocabulary in which every printable ASCII and Latin-1 text tokenizes."""
    ascii_chars = [chr(code) for code in range(33, 127)]
    latin1_chars = [chr(code) for code in range(0xA1, 0x100) if chr(code).isprintable() and code != 0xAD]
    characters = ascii_chars + latin1_chars + ["Œ", "œ", "€"]
    alphanumerics = [char for char in characters if char.isalnum()]
    pieces = (
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        + characters
        + ["##" + char for char in alphanumerics]
        + ["##" + first + second for first in _FREQUENT_LETTERS for second in _FREQUENT_LETTERS]
        + ["##" + suffix for suffix in _SUFFIXES]
        + _WORDS
        + [word.capitalize() for word in _WORDS]
    )
    # Duplicates would give two ids to one token and leave a hole in the id range.
    return list(dict.fromkeys(pieces))


def _wordpiece_tokenizer() -> DistilBertTokenizerFast:
    vocab = {piece: index for index, piece in enumerate(_wordpiece_vocab())}
    # The same pipeline BertTokenizer builds for itself; cased, accents kept, as in the multilingual model.
    backend = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=False
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    return DistilBertTokenizerFast(tokenizer_object=backend, do_lower_case=False, model_max_length=512)


def _st_config() -> dict[str, object]:
    return {
        "__version__": {
            "sentence_transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
            "pytorch": torch.__version__,
        },
        "model_type": "SentenceTransformer",
        "prompts": {},
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    }


def _stamp(kind: str, size: str, dims: int) -> dict[str, object]:
    return {"standin": kind, "size": size, "dims": dims, "format": _FORMAT_VERSION,
            "note": "random weights, not for search"}


def _write_stamp(folder: Path, kind: str, size: str, dims: int) -> None:
    _write_json(folder / _STAMP_FILE, _stamp(kind, size, dims))


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
