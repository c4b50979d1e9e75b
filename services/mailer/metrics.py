"""The mailer's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

EMAILS_SENT = Counter("clientpress_emails_sent_total", "Emails accepted by SMTP", ["template"])
EMAILS_FAILED = Counter("clientpress_emails_failed_total", "Emails given up for good", ["template"])
EMAILS_RETRIED = Counter(
    "clientpress_emails_retried_total", "Sends that failed and were scheduled again", ["template"]
)
EMAILS_QUEUED = Gauge("clientpress_emails_queued", "Deliveries waiting to be sent")
WEBHOOKS_DELIVERED = Counter(
    "clientpress_webhooks_delivered_total", "Webhook deliveries answered with a 2xx"
)
WEBHOOKS_RETRIED = Counter(
    "clientpress_webhooks_retried_total", "Webhook tries that failed and were scheduled again"
)
WEBHOOKS_FAILED = Counter("clientpress_webhooks_failed_total", "Webhook deliveries given up")
