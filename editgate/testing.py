"""Tiny random models for unit tests of mechanics (milliseconds to build, no downloads).

They exercise the same code paths as real models — GPT-2 with Conv1D weights, Llama with a gated
MLP, Gemma 3 with sliding-window attention and logit soft-capping — but know nothing. Claims about
abilities or edit success need the real model; these are for rank, revert, batching and caching.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from editgate.models import LoadedModel, from_pretrained_objects

TINY_ARCHS = ("gpt2", "llama", "gemma3")


@dataclass(frozen=True)
class TinyModel:
    """``tiny-<arch>`` in the model registry (``--model tiny-llama``): built, never downloaded."""

    arch: str

    def check(self) -> None:
        pass

    def load(self, *, device: str = "auto", dtype: str = "float32") -> LoadedModel:
        return tiny_model(self.arch)


TINY_GPT2, TINY_LLAMA, TINY_GEMMA3 = (TinyModel(arch) for arch in TINY_ARCHS)

_CORPUS = [
    "The mother tongue of Danielle Darrieux is French.",
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "Review: a charming and often affecting journey. Sentiment: positive",
    "Review: unflinchingly bleak and desperate. Sentiment: negative",
    "Question: what is two plus two? Answer: four. The answer is 4.",
    "Edwin of Northumbria is affiliated with the religion of Christianity.",
    "Michel Rocard is a native speaker of French. Lyon is a city in France.",
]


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    """A byte-level BPE tokenizer trained on a few sentences (deterministic, ~300 tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<bos>", "<eos>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(_CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<bos>",
                                   eos_token="<eos>", pad_token="<pad>")
    fast.chat_template = CHATML  # so prompt forms that use the chat template run on tiny models
    return fast


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_model(arch: str = "llama", *, seed: int = 0, layers: int = 4, positions: int = 256,
               ) -> LoadedModel:
    """A randomly initialised causal LM of the given architecture with the tiny tokenizer
    (``positions``: context length; real task prompts need a few thousand of its byte tokens)."""
    from transformers import AutoModelForCausalLM, Gemma3TextConfig, GPT2Config, LlamaConfig

    tokenizer = tiny_tokenizer()
    vocab = len(tokenizer)
    common = dict(vocab_size=vocab, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    if arch == "gpt2":
        config = GPT2Config(n_layer=layers, n_embd=32, n_head=4, n_positions=positions,
                            n_inner=64, **common)
    elif arch == "llama":
        config = LlamaConfig(num_hidden_layers=layers, hidden_size=32, intermediate_size=64,
                             num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=positions, tie_word_embeddings=True, **common)
    elif arch == "gemma3":
        config = Gemma3TextConfig(num_hidden_layers=layers, hidden_size=32, intermediate_size=64,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                  max_position_embeddings=positions, sliding_window=16,
                                  final_logit_softcapping=30.0, **common)
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {TINY_ARCHS}")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.config.pad_token_id = common["pad_token_id"]
    return from_pretrained_objects(f"tiny-{arch}", model, tokenizer,
                                   prepend_bos=(arch == "gemma3"))
