"""LLaVA-1.5's own tokenizer and image processor, offline: what ``llava-hf/llava-1.5-7b-hf`` ships, rebuilt without
the hub, so that a model built from the shipped config (``no_weights``) sees exactly the inputs the real one does.

The tokenizer is LLaMA-2's SentencePiece vocabulary (32000 pieces) plus ``<image>`` (32000) and ``<pad>`` (32001).
It ships with the package, converted, as ``llava15_tokenizer/tokenizer.json.gz`` (a ``tokenizers`` file, 0.5 MB)
rather than being built on first use: building needs llama.cpp's vocabulary file, which comes only inside the 77 MB
``llama-cpp-python`` source package, and the ``gguf`` reader, while the places this runs (CI, a lent GPU machine, a
user's laptop offline) have neither network nor that package. ``python -m llava_accel.models.processor GGUF_DIR``
rebuilds the file from llama.cpp's ``models/`` folder; the tests check it against llama.cpp's own test vectors.

The conversion keeps the byte-pair merges transformers derives from the GGUF, but replaces its pre-tokenizer: read
from GGUF, transformers splits with ``Metaspace(prepend_scheme="first")``, which drops the "▁" SentencePiece puts
before a leading space (" Hello" -> [15043] where LLaMA gives [29871, 15043]; 15 of llama.cpp's 47 test strings
differ). The Llama-2 tokenizer's own normalizer (prepend "▁", spaces to "▁", no pre-tokenizer) gives all 47.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path
from typing import Any

TOKENIZER_FILE = Path(__file__).parent / "llava15_tokenizer" / "tokenizer.json.gz"
GGUF_NAME = "ggml-vocab-llama-spm.gguf"
IMAGE_TOKEN, PAD_TOKEN = "<image>", "<pad>"
ADDED = {IMAGE_TOKEN: 32000, PAD_TOKEN: 32001}  # llava-hf's ids, after LLaMA-2's 32000 pieces
# llava-hf/llava-1.5-7b-hf's chat template: "USER: <image>\n{text} ASSISTANT:" for one image and one question
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")
# llava-hf's preprocessor_config.json: OpenAI CLIP ViT-L/14-336's preprocessing
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
BICUBIC = 3  # PIL.Image.Resampling.BICUBIC


@lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    return gzip.decompress(TOKENIZER_FILE.read_bytes()).decode("utf-8")


def llava_tokenizer() -> Any:
    """llava-hf's tokenizer: BOS added, ``<pad>`` padding on the left, ``<image>`` and ``<pad>`` special."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_tokenizer_json()), bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>", pad_token=PAD_TOKEN, padding_side="left",
                                   chat_template=CHAT_TEMPLATE)


def llava_processor(config: Any) -> Any:
    """llava-hf's ``LlavaProcessor`` for a LLaVA ``config``: CLIP preprocessing at its vision tower's image size
    (shortest edge, then centre crop; bicubic; OpenAI CLIP mean and std) and ``llava_tokenizer()``."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    vision = config.vision_config
    side = vision.image_size
    images = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                                resample=BICUBIC, do_center_crop=True, do_resize=True, do_rescale=True,
                                rescale_factor=1 / 255, do_normalize=True, image_mean=CLIP_MEAN, image_std=CLIP_STD,
                                do_convert_rgb=True)
    return LlavaProcessor(image_processor=images, tokenizer=llava_tokenizer(), patch_size=vision.patch_size,
                          vision_feature_select_strategy=config.vision_feature_select_strategy,
                          num_additional_image_tokens=1, image_token=IMAGE_TOKEN, chat_template=CHAT_TEMPLATE)


def read_test_vectors(folder: str | Path, name: str = GGUF_NAME) -> list[tuple[str, list[int]]]:
    """llama.cpp's tokenizer test vectors: ``NAME.inp`` (texts, each followed by a ``__ggml_vocab_test__`` line) and
    ``NAME.out`` (one line of ids per text, no BOS), as its ``test-tokenizer-0`` reads them."""
    folder = Path(folder)
    texts = (folder / f"{name}.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")[:-1]
    ids = [[int(i) for i in line.split()] for line in (folder / f"{name}.out").read_text(encoding="utf-8")
           .split("\n")[: len(texts)]]
    return list(zip(texts, ids))


def convert(gguf_dir: str | Path, out: str | Path = TOKENIZER_FILE) -> int:
    """Rebuild the shipped tokenizer file from llama.cpp's ``models/`` folder (needs ``pip install gguf``); returns
    how many of llama.cpp's test vectors it misses (0, or the file is not written)."""
    from tokenizers import AddedToken, normalizers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=GGUF_NAME).backend_tokenizer
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = None
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ADDED])
    if any(tok.token_to_id(t) != i for t, i in ADDED.items()):
        raise ValueError(f"{GGUF_NAME} is not LLaMA-2's 32000-piece vocabulary: the added tokens got other ids")
    missed = sum(tok.encode(text, add_special_tokens=False).ids != ids for text, ids in read_test_vectors(gguf_dir))
    if not missed:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_bytes(gzip.compress(tok.to_str().encode("utf-8"), compresslevel=9, mtime=0))
    return missed


if __name__ == "__main__":  # python -m llava_accel.models.processor .../vendor/llama.cpp/models
    import sys

    missed = convert(sys.argv[1])
    print(f"{missed} test vectors missed" if missed else f"wrote {TOKENIZER_FILE}")
    sys.exit(1 if missed else 0)
