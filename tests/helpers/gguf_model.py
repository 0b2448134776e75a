"""Write a tiny llama-architecture GGUF (random weights, chatml template) with PyPI's ``gguf``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from random_models.llm import add_chatml_vocabulary


def _vocab() -> tuple[list[str], list[int]]:
    tokens = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    types = [2, 3, 3, 3, 3]  # unknown, control
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [6] * 256  # byte fallback
    words = [c for c in "abcdefghijklmnopqrstuvwxyz"] + ["the", "and", "hello", "world", "voice", "agent"]
    for word in words:
        tokens += ["\u2581" + word, word]
        types += [1, 1]
    return tokens, types


def write(path: Path, dim: int = 64, layers: int = 2, heads: int = 4, seed: int = 0,
          arch: str = "llama") -> Path:
    """``arch`` "llama" (attention, KV cache) or "mamba" (recurrent state, which cannot drop a suffix)."""
    import gguf

    rng = np.random.default_rng(seed)
    tokens, types = _vocab()
    vocab = len(tokens)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(f"tiny-test-{arch}")
    writer.add_context_length(2048)
    writer.add_embedding_length(dim)
    writer.add_block_count(layers)
    if arch == "mamba":
        writer.add_ssm_conv_kernel(4)
        writer.add_ssm_inner_size(2 * dim)
        writer.add_ssm_state_size(16)
        writer.add_ssm_time_step_rank(8)
    else:
        writer.add_feed_forward_length(dim * 2)
        writer.add_head_count(heads)
        writer.add_head_count_kv(heads)
        writer.add_rope_dimension_count(dim // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    add_chatml_vocabulary(writer, tokens, types, [0.0] * vocab)

    def tensor(name: str, *shape: int, scale: float = 0.02) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    embeddings = rng.standard_normal((vocab, dim)).astype(np.float32) * 0.02
    embeddings[:, 0] = 1.0  # a constant residual dimension ...
    output = rng.standard_normal((vocab, dim)).astype(np.float32) * 0.02
    special = np.array([t != 1 for t in types])
    output[special, 0] = -50.0  # ... through which control and byte tokens never win: printable text only
    writer.add_tensor("token_embd.weight", embeddings)
    for i in range(layers if arch == "llama" else 0):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(dim, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(dim, np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            tensor(f"blk.{i}.{name}.weight", dim, dim)
        tensor(f"blk.{i}.ffn_gate.weight", dim * 2, dim)
        tensor(f"blk.{i}.ffn_up.weight", dim * 2, dim)
        tensor(f"blk.{i}.ffn_down.weight", dim, dim * 2)
    inner = 2 * dim
    for i in range(layers if arch == "mamba" else 0):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(dim, np.float32))
        tensor(f"blk.{i}.ssm_in.weight", 2 * inner, dim)
        tensor(f"blk.{i}.ssm_conv1d.weight", inner, 4)
        tensor(f"blk.{i}.ssm_conv1d.bias", inner)
        tensor(f"blk.{i}.ssm_x.weight", 8 + 2 * 16, inner)
        tensor(f"blk.{i}.ssm_dt.weight", inner, 8)
        tensor(f"blk.{i}.ssm_dt.bias", inner)
        writer.add_tensor(f"blk.{i}.ssm_a", -np.ones((inner, 16), np.float32))
        writer.add_tensor(f"blk.{i}.ssm_d", np.ones(inner, np.float32))
        tensor(f"blk.{i}.ssm_out.weight", dim, inner)
    writer.add_tensor("output_norm.weight", np.ones(dim, np.float32))
    writer.add_tensor("output.weight", output)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
