"""Streaming speech-to-text server: NeMo cache-aware FastConformer behind the bots WebSocket protocol."""
