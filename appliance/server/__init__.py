"""The appliance's HTTP server: OpenAI-compatible inference, retrieval, documents, admin, metrics."""

from appliance.server.app import create_app
from appliance.server.config import ConfigError, ServerConfig, load_config
from appliance.server.runner import serve

__all__ = ["ConfigError", "ServerConfig", "create_app", "load_config", "serve"]
