"""The Terra integration: everything Terra-facing, liftable into another Flask app by copying this folder
(docs/copy-into-your-app.md). Nothing here imports the app around it; the app plugs in through
`extension.TerraIntegration` and implements `host.TerraHost`.

- `extension`: the Flask extension: settings from app.config, the Terra client, the webhook blueprint.
- `host`: what the host app implements (find a user by reference_id, apply an event, the inbox table).
- `client`: the HTTP client for Terra's REST and widget APIs.
- `data_requests`: asking Terra for a user's history (data endpoints, `to_webhook`), within its limits.
- `signature`: signing and verifying webhook signatures.
- `events`: parsing webhook bodies into typed events.
- `webhooks`: the webhook view: raw body, verify, record, acknowledge.
- `inbox`: each verified delivery recorded once, applied through the host, replayable.
- `models`: the inbox table's columns, event outcomes, the longest values handed on.
- `reference_ids`, `signing`: the opaque signed id each user gets at Terra, and the app-keyed signers.
- `text_checks`: whether text can be stored (NUL, lone surrogates), for every input path.
"""
