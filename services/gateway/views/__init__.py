"""The gateway's views: its pages and /api/v1, thin (read the request, call a use case
or an upstream client, answer). Routes only; no rule lives here."""
