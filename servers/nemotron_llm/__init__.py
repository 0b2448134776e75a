"""The LLM service: launches llama.cpp or vLLM on port 8000 and turns its /health into readiness."""
