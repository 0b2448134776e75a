"""Settings of ``nemotron-tts`` (the ``[tts]`` table of nemotron.toml, ``NEMOTRON_TTS_*``, flags)."""

from __future__ import annotations

from dataclasses import dataclass

from nemotron_common import ports
from nemotron_common.config import port_number, positive, setting

VOICES = "john,sofia,aria,jason,leo"  # the released checkpoint's baked speakers, in index order


@dataclass
class TTSConfig:
    model: str = setting("", "path to a Magpie .nemo file, or a Hugging Face id found in the local cache")
    codec: str = setting("", "audio codec .nemo path or Hugging Face id (default: the checkpoint's own)")
    hf_cache: str = setting("", "Hugging Face hub cache to look up model ids in (default: HF_HUB_CACHE)")
    host: str = setting("127.0.0.1", "address to bind")
    port: int = setting(ports.TTS, "TCP port for HTTP, the WebSocket and /health", check=port_number)
    api_key_file: str = setting("", "file with the API key clients must send as Authorization: Bearer "
                                "(default: the unit's api-key credential, if it loads one; else none)")
    allowed_origins: str = setting("", "browser origins (scheme://host:port, comma-separated, * for any) "
                                   "allowed to connect; requests without an Origin are not browsers")
    device: str = setting("auto", "torch device: auto, cpu, cuda or cuda:N")
    voices: str = setting(VOICES, "voice names for the model's baked speakers, in speaker-index order")
    default_voice: str = setting("aria", "voice used when a request names none")
    cfg: bool = setting(True, "classifier-free guidance (better speech, twice the decoder work)")
    cuda_graphs: bool = setting(True, "replay the decoder step, per-frame sampling and codec calls from CUDA "
                                     "graphs (CUDA only)")
    kv_cache: bool = setting(True, "reuse the decoder's attention keys and values across steps")
    tf32: bool = setting(True, "float32 matrix products on a GPU's tensor cores in TF32 (inputs rounded to "
                         "float16's 10-bit mantissa, sums in float32), as Magpie's float32 decoder is "
                         "otherwise computed on the GPU's slow float32 path; off: NeMo's full float32 "
                         "numerics")
    static_decoder: bool = setting(True, "decoder steps on fixed-size caches (graph-captured on CUDA) "
                                   "instead of NeMo's growing ones; needs kv_cache")
    kv_cache_dtype: str = setting("auto", "type the static decoder keeps attention keys and values in: "
                                  "model (the model's, float32 for Magpie, NeMo's numerics), float16 (half "
                                  "the memory of a large batch's largest part; attention's two products run "
                                  "in it, softmax and the rest in the model's type), bfloat16, or auto "
                                  "(float16 on CUDA, model on the CPU)",
                                  choices=("auto", "model", "float16", "bfloat16"))
    continuous_batching: bool = setting(True, "segments join the running batch between decoder steps, "
                                        "once the streams playing have audio enough buffered (see "
                                        "join_wait_ms); off: fixed batches, a segment arriving while one "
                                        "runs waits for all of it. Needs static_decoder (without it: "
                                        "fixed batches)")
    carried_codec: bool = setting(True, "streamed chunks decode only their new frames, carrying the codec's "
                                  "convolution states (a causal HiFi-GAN codec); off: each chunk re-decodes "
                                  "its receptive field")
    max_frames: int = setting(0, "codec frames per sentence at most (0 = the model's own limit)")
    cpu_threads: int = setting(0, "torch intra-op threads (0 = 1 on a GPU, the usable cores on the CPU)")
    engine_host: str = setting("thread", "where the model runs: a thread of the server's, or a process of "
                               "its own (the event loop's work never holds its GIL)",
                               choices=("thread", "process"))
    max_batch: int = setting(16, "most segments generated together in one batch", check=positive)
    prefill_rows: int = setting(64, "decoder rows (two a segment with cfg) whose prompt runs at a time "
                                "(0 = the whole batch): fewer, less memory at a large max_batch and "
                                "later first audio when more segments start together",
                                check=lambda v: None if v >= 0 else "must be 0 or more")
    join_wait_ms: float = setting(500.0, "with continuous batching, a segment waits up to this long to join "
                                  "the running batch until every stream playing has audio enough "
                                  "buffered to absorb its prompt pass (0 = join at the next step)",
                                  check=lambda v: None if v >= 0 else "must be 0 or more")
    gather_ms: float = setting(5.0, "an idle engine gathers a burst of segments in steps of this long "
                                    "(a lone segment waits a fifth of it)")
    max_sessions: int = setting(64, "concurrent WebSocket clients; more are refused with 503", check=positive)
    idle_timeout: float = setting(10.0, "seconds a new connection may send nothing before it is closed",
                                  check=positive)
    http_sample_rate: int = setting(0, "sample rate of /v1/audio/speech (0 = the model's, 22050 for Magpie; "
                                    "24000 is what OpenAI clients assume for pcm)",
                                    check=lambda v: None if v == 0 or 8000 <= v <= 48000 else
                                    "must be 0 or between 8000 and 48000")
    max_text_chars: int = setting(4000, "longest text one request may carry", check=positive)
    seed: int = setting(0, "seed sampling before each batch (0 = random; set it for reproducible audio)")
    drain_timeout: float = setting(30.0, "seconds open streams get to finish on shutdown", check=positive)
    warmup_text: str = setting("This is a warm-up sentence that is long enough to claim the memory of a real "
                               "reply.", "text synthesised once before READY")
    log_level: str = setting("INFO", "log level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))

    @property
    def voice_names(self) -> list[str]:
        return [name.strip().lower() for name in self.voices.split(",") if name.strip()]

    def check(self) -> str | None:
        if not self.model:
            return "model is not set: give a .nemo path or a Hugging Face id"
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            return f"device = {self.device!r}: must be auto, cpu, cuda or cuda:N"
        if self.default_voice.lower() not in self.voice_names:
            return f"default_voice = {self.default_voice!r} is not one of voices ({self.voices})"
        if len(self.warmup_text) > self.max_text_chars:
            return (f"warmup_text has {len(self.warmup_text)} characters, more than max_text_chars = "
                    f"{self.max_text_chars}: shorten it or raise the limit")
        if len(set(self.voice_names)) != len(self.voice_names):
            return f"voices = {self.voices!r} names a voice twice"
        return None
