"""Write a random-weight GGUF with Nemotron-3-Nano's architecture (``nemotron_h_moe``) for llama.cpp.

The weights cannot be downloaded on the benchmark GPU or in CI, and a voice-to-voice figure needs an
LLM that decodes at the real model's speed: the same hybrid stack (Mamba-2, grouped-query attention
and mixture-of-experts blocks in the released layer pattern), the same widths, expert count and top-k,
the same vocabulary size and the same quantisation (Q8_0, the default GGUF), so that every token reads
the same bytes and runs the same kernels as the released checkpoint. ``nano`` has the shape of
nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B (31.6 B parameters, about 33 GB); ``tiny`` keeps the layer mix at
a size a CPU test serves in seconds; ``nano-state`` has nano's per-layer state in five blocks.

The quantised blocks are random bytes tiled from one pool (a benchmark reads them, nobody learns from
them), so the 33 GB file is written at disk speed. The text it produces is random words; sentence ends
are rare, so a benchmark cuts the first "sentence" by token count.

    python -m random_models.llm OUT.gguf --shape nano
"""

from __future__ import annotations

import itertools
import string
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
          "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
Q8_BLOCK = 32  # values per Q8_0 block: an fp16 scale and 32 int8


@dataclass(frozen=True)
class Shape:
    embd: int
    pattern: str  # one letter per block: M Mamba-2, * attention, E mixture of experts
    heads: int
    kv_heads: int
    head_dim: int
    mamba_heads: int
    mamba_head_dim: int
    state: int
    groups: int
    experts: int
    experts_used: int
    expert_ff: int
    shared_ff: int
    vocab: int
    conv: int = 4


SHAPES = {
    "nano": Shape(embd=2688, pattern="MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME", heads=32,
                  kv_heads=2, head_dim=128, mamba_heads=64, mamba_head_dim=64, state=128, groups=8,
                  experts=128, experts_used=6, expert_ff=1856, shared_ff=3712, vocab=131072),
    # nano's Mamba-2 and attention widths in five blocks, with small experts and vocabulary: one
    # sequence's state per Mamba layer as the real model's, in a file of 131 MiB
    "nano-state": Shape(embd=2688, pattern="MEM*E", heads=32, kv_heads=2, head_dim=128, mamba_heads=64,
                        mamba_head_dim=64, state=128, groups=8, experts=8, experts_used=2, expert_ff=64,
                        shared_ff=64, vocab=4096),
    "tiny": Shape(embd=64, pattern="MEM*EME", heads=4, kv_heads=2, head_dim=16, mamba_heads=4,
                  mamba_head_dim=16, state=16, groups=2, experts=8, experts_used=2, expert_ff=64,
                  shared_ff=64, vocab=4096),
}


def vocabulary(size: int) -> tuple[list[str], list[int]]:
    """A SentencePiece-style vocabulary: control tokens, byte fallback, punctuation, then lowercase
    pieces (with and without the word-start mark) of growing length until ``size``."""
    tokens = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    types = [2, 3, 3, 3, 3]  # unknown, control
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [6] * 256  # byte
    for piece in (".", ",", "!", "?", "\u2581"):
        tokens.append(piece)
        types.append(1)
    for length in itertools.count(1):
        for letters in itertools.product(string.ascii_lowercase, repeat=length):
            for piece in ("\u2581" + "".join(letters), "".join(letters)):
                if len(tokens) == size:
                    return tokens, types
                tokens.append(piece)
                types.append(1)
    raise AssertionError("unreachable")


class _Tensors:
    """Shapes in numpy order (the last axis is ggml's ne0); Q8_0 data tiled from one random pool."""

    def __init__(self, seed: int, std: float = 0.02):
        rng = np.random.default_rng(seed)
        blocks = 1 << 20  # 34 MiB of distinct blocks
        scale = np.full((blocks, 1), std / 73.3, np.float16).view(np.uint8)  # int8 uniform: sd 73.3
        values = rng.integers(-127, 128, size=(blocks, Q8_BLOCK), dtype=np.int8).view(np.uint8)
        self.pool = np.concatenate([scale, values], axis=1).reshape(-1)
        self.rng = rng
        self.std = std

    def q8(self, *shape: int) -> np.ndarray:
        assert shape[-1] % Q8_BLOCK == 0, shape
        row = shape[-1] // Q8_BLOCK * (Q8_BLOCK + 2)
        start = int(self.rng.integers(0, len(self.pool) // (Q8_BLOCK + 2))) * (Q8_BLOCK + 2)  # whole blocks
        flat = np.resize(np.roll(self.pool, -start), int(np.prod(shape[:-1])) * row)
        return flat.reshape(*shape[:-1], row)

    def f32(self, *shape: int, value: float | None = None) -> np.ndarray:
        if value is not None:
            return np.full(shape, value, np.float32)
        return (self.rng.standard_normal(shape) * self.std).astype(np.float32)


def _metadata(writer, shape: Shape, tokens: list[str], types: list[int]) -> None:
    import gguf

    layers = len(shape.pattern)
    writer.add_name("random-nemotron-h-moe")
    writer.add_context_length(1 << 20)
    writer.add_embedding_length(shape.embd)
    writer.add_block_count(layers)
    writer.add_feed_forward_length([shape.expert_ff if kind == "E" else 0 for kind in shape.pattern])
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv([shape.kv_heads if kind == "*" else 0 for kind in shape.pattern])
    writer.add_key_length(shape.head_dim)
    writer.add_value_length(shape.head_dim)
    writer.add_rope_scaling_finetuned(False)
    writer.add_layer_norm_eps(1e-5)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_ssm_conv_kernel(shape.conv)
    writer.add_ssm_state_size(shape.state)
    writer.add_ssm_group_count(shape.groups)
    writer.add_ssm_inner_size(shape.mamba_heads * shape.mamba_head_dim)
    writer.add_ssm_time_step_rank(shape.mamba_heads)
    writer.add_expert_count(shape.experts)
    writer.add_expert_used_count(shape.experts_used)
    writer.add_expert_feed_forward_length(shape.expert_ff)
    writer.add_expert_shared_feed_forward_length(shape.shared_ff)
    writer.add_expert_shared_count(1)
    writer.add_expert_weights_norm(True)
    writer.add_expert_weights_scale(2.5)
    writer.add_expert_group_count(1)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    add_chatml_vocabulary(writer, tokens, types, [-float(i) for i in range(len(tokens))])


def add_chatml_vocabulary(writer, tokens: list[str], types: list[int], scores: list[float]) -> None:
    """A SentencePiece-style vocabulary whose tokens 0-4 are <unk>, <s>, </s>, <|im_start|>,
    <|im_end|>, with a chatml template: what the bots' prompts and llama-server's chat endpoint need."""
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(4)  # <|im_end|> ends a chatml turn
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML)


def _tensors(shape: Shape):
    """(name, numpy shape, quantised, value): value None is random, a number fills the tensor."""
    d_inner = shape.mamba_heads * shape.mamba_head_dim
    conv_channels = d_inner + 2 * shape.groups * shape.state
    in_proj = 2 * d_inner + 2 * shape.groups * shape.state + shape.mamba_heads
    yield "token_embd.weight", (shape.vocab, shape.embd), True, None
    yield "output_norm.weight", (shape.embd,), False, 1.0
    yield "output.weight", (shape.vocab, shape.embd), True, None
    for i, kind in enumerate(shape.pattern):
        block = f"blk.{i}"
        yield f"{block}.attn_norm.weight", (shape.embd,), False, 1.0
        if kind == "M":
            yield f"{block}.ssm_in.weight", (in_proj, shape.embd), True, None
            yield f"{block}.ssm_conv1d.weight", (conv_channels, shape.conv), False, None
            yield f"{block}.ssm_conv1d.bias", (conv_channels,), False, 0.0
            yield f"{block}.ssm_dt.bias", (shape.mamba_heads,), False, -4.0  # softplus: dt near 0.02
            yield f"{block}.ssm_a", (shape.mamba_heads, 1), False, -1.0  # A = -exp(A_log)
            yield f"{block}.ssm_d", (shape.mamba_heads, 1), False, 1.0
            yield f"{block}.ssm_norm.weight", (shape.groups, d_inner // shape.groups), False, 1.0
            yield f"{block}.ssm_out.weight", (shape.embd, d_inner), True, None
        elif kind == "*":
            q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
            yield f"{block}.attn_q.weight", (q, shape.embd), True, None
            yield f"{block}.attn_k.weight", (kv, shape.embd), True, None
            yield f"{block}.attn_v.weight", (kv, shape.embd), True, None
            yield f"{block}.attn_output.weight", (shape.embd, q), True, None
        else:
            experts, ff, shared = shape.experts, shape.expert_ff, shape.shared_ff
            yield f"{block}.ffn_gate_inp.weight", (experts, shape.embd), False, None  # kept in F32
            yield f"{block}.exp_probs_b.bias", (experts,), False, 0.0
            yield f"{block}.ffn_up_exps.weight", (experts, ff, shape.embd), True, None
            yield f"{block}.ffn_down_exps.weight", (experts, shape.embd, ff), True, None
            yield f"{block}.ffn_up_shexp.weight", (shared, shape.embd), True, None
            yield f"{block}.ffn_down_shexp.weight", (shape.embd, shared), True, None


def write(path: Path, shape: str = "tiny", seed: int = 0) -> Path:
    """Write the GGUF tensor by tensor (the whole model is never in memory)."""
    import gguf

    spec = SHAPES[shape]
    tokens, types = vocabulary(spec.vocab)
    writer = gguf.GGUFWriter(str(path), "nemotron_h_moe")
    _metadata(writer, spec, tokens, types)
    plan = list(_tensors(spec))
    for name, dims, quantised, _ in plan:
        if quantised:
            row = dims[-1] // Q8_BLOCK * (Q8_BLOCK + 2)
            writer.add_tensor_info(name, (*dims[:-1], row), np.dtype(np.uint8), int(np.prod(dims[:-1])) * row,
                                   raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor_info(name, dims, np.dtype(np.float32), int(np.prod(dims)) * 4)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    make = _Tensors(seed)
    for _, dims, quantised, value in plan:
        writer.write_tensor_data(make.q8(*dims) if quantised else make.f32(*dims, value=value))
    writer.close()
    return path


@click.command()
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--shape", type=click.Choice(sorted(SHAPES)), default="tiny", show_default=True)
@click.option("--seed", default=0, show_default=True)
def main(out: Path, shape: str, seed: int) -> None:
    """Write a random-weight nemotron_h_moe GGUF of SHAPE to OUT."""
    write(out, shape, seed)
    click.echo(f"{out}: {out.stat().st_size / 2**30:.2f} GiB, {shape}")


if __name__ == "__main__":
    main()
