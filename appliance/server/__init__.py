"""The appliance's HTTP server: OpenAI-compatible inference, retrieval, documents, admin, metrics.

Entry points: `appliance.server.runner.serve(config)` and `appliance.server.app.create_app(config)`.
Kept import-light on purpose: the control-plane commands (`appliance keys ...`) use only the store,
and must not pay for importing torch.
"""
