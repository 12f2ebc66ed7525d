"""Tiny random-init Hugging Face CLIP / SigLIP models written to a folder as ``save_pretrained`` does (offline: the
tokenizer is a word-level ``tokenizers`` model built here), for ``--backbone hf:PATH`` tests."""
from __future__ import annotations

from pathlib import Path

WORDS = ("a photo of the red green blue yellow cat dog X thing texture picture . , class").split()
SPECIAL = {"[PAD]": 0, "[UNK]": 1, "[EOS]": 3, "[BOS]": 4}   # eos != 2: CLIP's legacy argmax pooling is not used


def _tokenizer(length: int, bos: bool = True):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    vocab = {**SPECIAL, "[RES]": 2, **{w: i + 5 for i, w in enumerate(dict.fromkeys(WORDS))}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    # bos=False: only an end token, as SigLIP's sentencepiece tokenizer does
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A [EOS]" if bos else "$A [EOS]",
                                                       special_tokens=[("[BOS]", 4), ("[EOS]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]",
                                   unk_token="[UNK]", model_max_length=length), len(vocab)


def save_tiny_hf(folder: Path, kind: str = "clip", seed: int = 0, image_size: int = 32, bos: bool = True) -> Path:
    """A random-init ``CLIPModel`` (kind ``clip``) or ``SiglipModel`` (``siglip``) with its tokenizer and image
    processor in ``folder``; the same ``seed`` gives the same weights. ``bos=False``: the tokenizer adds no start
    token (real SigLIP's does not)."""
    import torch
    import transformers as tf
    length = 16
    tokenizer, vocab_size = _tokenizer(length, bos)
    text = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=length, pad_token_id=0, bos_token_id=4,
                eos_token_id=3)
    vision = dict(image_size=image_size, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                  num_attention_heads=4)
    torch.manual_seed(seed)
    if kind == "clip":
        model = tf.CLIPModel(tf.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24))
        processor = tf.CLIPImageProcessor(size={"shortest_edge": image_size},
                                          crop_size={"height": image_size, "width": image_size})
    else:
        model = tf.SiglipModel(tf.SiglipConfig(text_config=text, vision_config=vision))
        with torch.no_grad():  # SigLIP's init is scale 1, bias 0; real checkpoints have both far from that
            model.logit_scale.fill_(2.3)
            model.logit_bias.fill_(-10.0)
        processor = tf.SiglipImageProcessor(size={"height": image_size, "width": image_size})
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
