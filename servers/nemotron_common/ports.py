"""The stack's default ports, defined once: the services' settings and the installer take them here."""

ASR = 8080
TTS = 8001
LLM = 8000
RIVA = 50051

DEFAULTS = {"asr": ASR, "tts": TTS, "llm": LLM, "riva": RIVA}
