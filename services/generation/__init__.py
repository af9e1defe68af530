"""The generation service: The generation saga, AI providers, progress streaming, rate limits, batch."""
