"""Terra integration: one capability a module, none of them tied to Flask routes.

- `client`: the HTTP client for Terra's REST and widget APIs.
- `signature`: signing and verifying webhook signatures.
- `events`: parsing webhook bodies into typed events.
"""
