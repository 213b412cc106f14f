"""A tiny local tokenizer and Qwen2 model, built from scratch with no download.

The toy setting (CPU demo, toy-scale study) needs a causal LM that verl loads exactly like a
real one: a `save_pretrained` folder holding a `PreTrainedTokenizerFast` with a chat template
and a Qwen2 config + weights. Everything here is built locally from the task's own text.

Tokenizer: byte-level BPE (any UTF-8 text encodes, so a teacher template or a stray character
never hits an unknown token) with exactly Qwen2's normalizer, pre-tokenizer and decoder. The
Qwen2 pre-tokenizer splits every digit into its own token, which is what arithmetic needs, and
matching it matters: transformers 5 loads a folder whose config says `qwen2` as a
`Qwen2Tokenizer`, which rebuilds the pipeline from vocab + merges with Qwen2's own pieces, so
any other pipeline would tokenize differently after a save/load round trip. Chat template: Qwen/ChatML style turns
`<|im_start|>{role}\n{content}<|im_end|>\n`; `add_generation_prompt` opens an assistant turn;
the assistant ends its answer with `<|im_end|>`, which is the EOS token.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN2_PRETOKENIZE_REGEX

# `<|endoftext|>` is Qwen2Tokenizer's default unk token: it must be in the vocabulary, or the
# loader appends it as an extra id beyond the model's embedding table.
PAD_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|bos|>"
IM_START_TOKEN = "<|im_start|>"
IM_END_TOKEN = "<|im_end|>"  # end of a chat turn; also the EOS that stops generation
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, IM_START_TOKEN, IM_END_TOKEN]

# ChatML turns (the same layout as Qwen). No default system prompt: the tiny model's context
# stays short, and a system message is rendered only when the caller passes one.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tokenizer(texts: Iterable[str], out_dir: str | None = None, vocab_size: int = 512) -> PreTrainedTokenizerBase:
    """Train a byte-level BPE tokenizer on `texts` and save it to `out_dir` (a temp dir if None).

    Digits are split before BPE, so "1234" is always four tokens. The 256 byte symbols are
    always in the vocabulary, so any text round-trips through encode/decode. Returns the
    tokenizer as `AutoTokenizer` loads it back from the folder (a fast tokenizer with pad, bos,
    eos = `<|im_end|>` and the chat template), so callers use exactly what verl will load.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size={vocab_size} is below the 256 byte symbols + {len(SPECIAL_TOKENS)} special tokens")
    core = Tokenizer(models.BPE())
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(list(texts), trainer=trainer)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=IM_END_TOKEN,
        additional_special_tokens=[IM_START_TOKEN],
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    if out_dir is None:
        out_dir = tempfile.mkdtemp(prefix="toy_tokenizer_")
    os.makedirs(out_dir, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    return AutoTokenizer.from_pretrained(out_dir)


def build_model(
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | None = None,
    hidden: int = 128,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int | None = None,
    max_positions: int = 512,
    seed: int = 0,
) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2 causal LM sized to `tokenizer` (float32, tied embeddings).

    If `out_dir` is given, the model (safetensors), its generation config and the tokenizer are
    saved there, so `AutoModelForCausalLM.from_pretrained(out_dir)` and
    `AutoTokenizer.from_pretrained(out_dir)` work offline.
    """
    if hidden % heads != 0 or heads % kv_heads != 0:
        raise ValueError(f"hidden={hidden} must divide by heads={heads}, and heads by kv_heads={kv_heads}")
    eos_id = tokenizer.convert_tokens_to_ids(IM_END_TOKEN)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate or 3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos_id,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=eos_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id
    )
    if out_dir is not None:
        save_checkpoint(model, tokenizer, out_dir)
    return model


def save_checkpoint(model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerBase, out_dir: str) -> None:
    """Save model (safetensors) + generation config + tokenizer into one HF folder."""
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
