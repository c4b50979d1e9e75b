"""The mailer's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EMAILS_SENT = Counter("clientpress_emails_sent_total", "Emails accepted by SMTP", ["template"])
EMAILS_FAILED = Counter("clientpress_emails_failed_total", "Emails given up for good", ["template"])
EMAILS_RETRIED = Counter(
    "clientpress_emails_retried_total", "Sends that failed and were scheduled again", ["template"]
)
EMAILS_WITHDRAWN = Counter(
    "clientpress_emails_withdrawn_total",
    "Emails withdrawn before they went (mail.withdraw: their invitation closed or resent)",
)
# One SMTP try, from the connection to the server's last answer (or the error), by how it
# ended: an SMTP relay takes from tens of milliseconds to its timeout
# (MAILER_SMTP_TIMEOUT_SECONDS, up to 600 s, once to connect and once for the message).
SMTP_SEND_SECONDS = Histogram(
    "clientpress_smtp_send_duration_seconds",
    "SMTP sends (connect to the last answer), by outcome: sent, retry, failed",
    ["outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
for _outcome in ("sent", "retry", "failed"):
    SMTP_SEND_SECONDS.labels(_outcome)  # exported at 0 from the start
EMAILS_QUEUED = Gauge("clientpress_emails_queued", "Deliveries waiting to be sent")
WEBHOOKS_DELIVERED = Counter(
    "clientpress_webhooks_delivered_total", "Webhook deliveries answered with a 2xx"
)
WEBHOOKS_RETRIED = Counter(
    "clientpress_webhooks_retried_total", "Webhook tries that failed and were scheduled again"
)
WEBHOOKS_FAILED = Counter("clientpress_webhooks_failed_total", "Webhook deliveries given up")
