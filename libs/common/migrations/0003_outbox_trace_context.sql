-- The trace context (W3C traceparent/tracestate as JSON) of the request or message that
-- wrote the row, so the relay publishes it inside the same trace (libs/common/tracing.py).
-- NULL when traces are off.
ALTER TABLE outbox ADD COLUMN trace_context text;
