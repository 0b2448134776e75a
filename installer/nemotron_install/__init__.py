"""nemotron-install: from a fresh GPU host to `systemctl start nemotron.target` (in progress: units)."""
