"""Flask blueprints, one per capability: auth (web login), connect (web pages), webhooks, health."""
