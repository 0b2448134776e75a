"""What every nemotron server shares: configuration, logging, readiness, health and shutdown."""
