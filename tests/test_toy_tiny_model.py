"""The tiny local tokenizer/model: what verl loads must behave exactly like what was built."""

import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from verl_avsd.toy.tiny_model import IM_END_TOKEN, build_model, build_tokenizer

CORPUS = [
    "Compute 37 + 48 - 19 + 6.",
    "37 + 48 = 85. 85 - 19 = 66. 66 + 6 = 72. Answer: 72",
] * 20


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tiny"))
    tokenizer = build_tokenizer(CORPUS, out, vocab_size=300)
    build_model(tokenizer, out, hidden=32, layers=1, heads=2, kv_heads=1)
    return out, tokenizer


def test_tokenizer_round_trips_and_splits_digits(built):
    _, tokenizer = built
    for text in CORPUS[:2] + ["  odd\tspacing\n\nand unicode: é∑ 1234567890"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("98765", add_special_tokens=False)["input_ids"])
    assert pieces == ["9", "8", "7", "6", "5"]


def test_chat_template_opens_assistant_turn(built):
    _, tokenizer = built
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Compute 1 + 2."}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nCompute 1 + 2.<|im_end|>\n<|im_start|>assistant\n"
    no_prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert not no_prompt.endswith("assistant\n")
    assert tokenizer.eos_token == IM_END_TOKEN
    assert tokenizer.pad_token is not None and tokenizer.bos_token is not None


def test_folder_loads_offline_with_identical_tokenization(built, monkeypatch):
    out, tokenizer = built
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded_tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert os.path.exists(os.path.join(out, "model.safetensors"))
    # Every token id the tokenizer can emit has an embedding row.
    assert len(loaded_tok) == model.config.vocab_size
    for text in CORPUS[:2]:
        assert loaded_tok(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert model.generation_config.eos_token_id == loaded_tok.eos_token_id
    ids = loaded_tok(CORPUS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)


def test_bad_sizes_are_rejected(built):
    _, tokenizer = built
    with pytest.raises(ValueError, match="vocab_size"):
        build_tokenizer(CORPUS, None, vocab_size=100)
    with pytest.raises(ValueError, match="heads"):
        build_model(tokenizer, None, hidden=30, heads=4)
