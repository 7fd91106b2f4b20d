"""LLM provider adapters that speak each provider's wire protocol over one shared aiohttp session."""
